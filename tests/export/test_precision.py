"""fp16 export: feature maps in float16, style/demodulation and norm statistics in float32, I/O float32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from modconv_export import ExportError, export_onnx
from modconv_export.layers.seed import ModulatedConv2d, PixelNorm
from modconv_export.rewrite import make_exportable
from modconv_export.rewrite.graph import half_form

from helpers import randomize, relative_l2, tiny_inputs


class NormedStack(nn.Module):
    """Feature-map PixelNorm between modulated convs, as the LATS decoder has."""

    def __init__(self):
        super().__init__()
        self.conv0 = ModulatedConv2d(3, 6, 3, latent_dim=8, normalize_mlp=True)
        self.norm = PixelNorm()
        self.conv1 = ModulatedConv2d(6, 3, 3, upsample=True, latent_dim=8, normalize_mlp=True)

    def forward(self, image, latent):
        return self.conv1(self.norm(torch.relu(self.conv0(image, latent))), latent)


def _ort(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_fp16_tiny_decoder_parity(exporter, tiny_decoder, tiny_args, tmp_path):
    path = export_onnx(tiny_decoder, tiny_args, tmp_path / "fp16.onnx", exporter=exporter, precision="fp16")
    model = onnx.load(str(path))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dtypes = {i.name: i.data_type for i in model.graph.initializer}
    assert conv_weights and all(dtypes[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT] * 2
    gemm_weights = [n.input[1] for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and n.input[1] in dtypes]
    assert gemm_weights and all(dtypes[w] == onnx.TensorProto.FLOAT for w in gemm_weights)
    for batch in (1, 3):
        image, latent = tiny_inputs(batch, seed=20 + batch)
        out = _ort(path, {"image": image.numpy(), "latent": latent.numpy()})
        assert out.dtype == np.float32 and np.isfinite(out).all()
        with torch.no_grad():
            err = relative_l2(out, tiny_decoder(image, latent).numpy())
        assert 1e-6 < err <= 1e-2  # really computed in fp16, and within the fp16 tolerance


def test_fp16_survives_large_activations(tmp_path):
    model = randomize(NormedStack(), seed=4)
    image, latent = torch.randn(2, 3, 8, 8) * 1000.0, torch.randn(2, 8)
    with torch.no_grad():
        reference = model(image, latent)
    half = half_form(make_exportable(model, (image, latent)), (image, latent))
    assert _float32_statistics(half, (image, latent))  # the PixelNorm's mean of squares is taken in float32
    with torch.no_grad():
        ours = half(image, latent)
        pre_norm = torch.relu(model.conv0(image, latent))
    assert (pre_norm**2).max() > 65504  # the mean of squares would overflow float16
    assert torch.isfinite(ours).all() and relative_l2(ours, reference) <= 1e-2
    path = export_onnx(model, (image, latent), tmp_path / "big.onnx", exporter="torchscript", precision="fp16")
    out = _ort(path, {"image": image.numpy(), "latent": latent.numpy()})
    assert np.isfinite(out).all() and relative_l2(out, reference.numpy()) <= 1e-2


def test_unknown_precision(tiny_decoder, tiny_args, tmp_path):
    with pytest.raises(ExportError, match="unknown precision"):
        export_onnx(tiny_decoder, tiny_args, tmp_path / "x.onnx", precision="int8")


# -- every export form declares its float32 islands; every family has an fp16 row ----------------------


def _dtypes(form, targets, args) -> dict[str, tuple]:
    """The dtypes each node calling one of ``targets`` reads and returns, in one run of ``form`` on ``args``."""
    seen = {}

    class Run(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.op == "call_function" and node.target in targets:
                ins = [self.env[a].dtype for a in node.all_input_nodes if isinstance(self.env.get(a), torch.Tensor)]
                seen[node.name] = (tuple(ins), out.dtype)
            return out

    with torch.no_grad():
        Run(form.graph_module).run(*args)
    return seen


def _float32_statistics(form, args) -> bool:
    """Whether every mean or sum in ``form``'s graph computes in float32 (its square taken in float32 too)."""
    aten = torch.ops.aten
    found = _dtypes(form, {aten.mean.dim, aten.sum.dim_IntList, aten.pow.Tensor_Scalar}, args)
    return bool(found) and all(ins == (torch.float32,) and out == torch.float32 for ins, out in found.values())


def test_islands_are_decided_on_the_graph(tiny_decoder, tiny_args):
    """Matrix products (style MLPs, the demodulation s^2 @ sum W^2) run in float32, convolutions in float16."""
    aten = torch.ops.aten
    half = half_form(make_exportable(tiny_decoder, tiny_args), tiny_args)
    matmuls = _dtypes(half, {aten.mm.default, aten.matmul.default, aten.addmm.default, aten.linear.default}, tiny_args)
    convs = _dtypes(half, {aten.conv2d.default, aten.convolution.default, torch.ops.modconv_export.depthwise_conv2d.default}, tiny_args)
    assert matmuls and all(set(ins) == {torch.float32} and out == torch.float32 for ins, out in matmuls.values())
    assert convs and all(set(ins) == {torch.float16} and out == torch.float16 for ins, out in convs.values())


def _naive_half(exportable, args):
    """What a plain ``model.half()`` export computes: everything in float16."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(exportable).half()(*[a.half() for a in args]).float()


@pytest.mark.parametrize("flavour", ["clean", "basicsr"])
def test_stylegan2_forms_demodulate_in_float32(flavour):
    """eps 1e-8 underflows float16 and s^2 summed over 64 channels overflows it: both stay float32."""
    from fixtures.stylegan2.layers import CleanModulatedConv2d
    from fixtures.stylegan2.layers import ModulatedConv2d as BasicsrModulatedConv2d

    torch.manual_seed(0)
    layer = (CleanModulatedConv2d if flavour == "clean" else BasicsrModulatedConv2d)(64, 64, 3, 8).eval()
    with torch.no_grad():
        layer.modulation.bias.zero_()  # a zero style then gives s = 0: demodulation is rsqrt(0 + eps)
    x = torch.randn(3, 64, 8, 8)
    style = torch.randn(3, 8) * 3000.0  # large s: s^2 @ sum W^2 > 65504
    style[1] = 0.0
    with torch.no_grad():
        reference = layer(x, style)
        exportable = make_exportable(layer)
        assert type(exportable).__name__ == "StyleGAN2ModulatedConvForm"
        ours = half_form(make_exportable(layer, (x, style)), (x, style))(x, style)
        # the same demodulation in float16 arithmetic: 0 where s^2 overflows, inf where eps underflows
        s = exportable.modulation(style)
        d16 = torch.rsqrt(torch.matmul((s * s).half(), exportable.weight_sq_sum_t.half()) + exportable.eps)
    assert bool((d16[0] == 0).any()) and bool(torch.isinf(d16[1]).all())  # the inputs do provoke both
    assert torch.isfinite(ours).all() and relative_l2(ours, reference) <= 1e-2


#: family -> (input index to scale, scale that breaks a plain float16 model)
FP16_SCALES = {"lats": (1, 300.0), "decoder": (0, 1000.0), "gfpgan": (0, 1500.0), "rosinality": (0, 1000.0)}


@pytest.mark.parametrize("name", list(FP16_SCALES))
def test_fp16_row_for_every_family(name, tmp_path):
    from modconv_export.families import get_family, registered_families

    assert {f.name for f in registered_families()} == set(FP16_SCALES)  # a new family needs a row here
    family = get_family(name)
    config = family.preset("small")
    torch.manual_seed(7)
    model = (
        family.build(config) if name == "gfpgan" else randomize(family.build(config), seed=7)
    )  # default init keeps GFPGAN's outputs bounded
    specs = family.inputs(config)
    args = tuple(s.example((2, *s.shape[1:]), seed=3) for s in specs)
    path = export_onnx(model, args, tmp_path / f"{name}.onnx", exporter="torchscript", precision="fp16",
                       input_names=[s.name for s in specs], output_names=list(family.outputs))  # fmt: skip
    index, scale = FP16_SCALES[name]
    for factor in (1.0, scale):
        feeds = [a * factor if i == index else a for i, a in enumerate(args)]
        with torch.no_grad():
            reference = model(*feeds)
        out = _ort(path, {s.name: f.numpy() for s, f in zip(specs, feeds)})
        assert out.dtype == np.float32 and np.isfinite(out).all(), (name, factor)
        assert relative_l2(out, reference.numpy()) <= 1e-2, (name, factor)
    # GFPGAN's small preset has too few channels to overflow (the layer test above covers its forms); rosinality's z is
    # pixel-normalised first, so no scale of it overflows anything
    if name not in ("gfpgan", "rosinality"):
        naive = _naive_half(make_exportable(model), tuple(feeds))
        assert not torch.isfinite(naive).all() or relative_l2(naive, reference) > 1e-2
