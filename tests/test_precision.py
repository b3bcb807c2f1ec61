"""fp16 export: feature maps in float16, style/demodulation and norm statistics in float32, I/O float32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from conftest import randomize, relative_l2, tiny_inputs
from modconv_export import ExportError, export_onnx
from modconv_export.precision import Float32Island, to_half
from modconv_export.reference import ModulatedConv2d, PixelNorm
from modconv_export.rewrite import make_exportable


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
    half = to_half(make_exportable(model), (image, latent))
    islands = {n for n, m in half.named_modules() if isinstance(m, Float32Island)}
    assert "model.norm" in islands and "model.conv0.style" in islands
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
