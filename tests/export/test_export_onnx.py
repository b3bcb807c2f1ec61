"""ONNX files from both exporters: standard ops, one depthwise Conv per blur, constant conv weights,
a symbolic batch axis, and ONNX Runtime output equal to the seed model at batch 1, 3 and 8."""

from __future__ import annotations

import os

import onnx
import onnxruntime as ort
import pytest
import torch

from modconv_export import DEFAULT_OPSET, ExportError, export_onnx, max_supported_opset
from modconv_export.export.checks import computed_conv_weights, conv_nodes, dynamic_batch_axes, non_standard_ops

from helpers import TINY_DECODER_BLURS, relative_l2, tiny_inputs

EXPORTERS = ("dynamo", "torchscript")


@pytest.fixture(scope="module", params=EXPORTERS)
def exported(request, tiny_decoder, tiny_args, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "tiny.onnx"
    export_onnx(tiny_decoder, tiny_args, path, exporter=request.param)
    return request.param, path, onnx.load(str(path))


def test_standard_ops_only(exported):
    _, _, model = exported
    assert non_standard_ops(model) == []
    assert not any(n.op_type == "PythonOp" for n in model.graph.node)
    assert model.opset_import[0].version == DEFAULT_OPSET


def test_each_blur_is_one_depthwise_conv(exported):
    _, _, model = exported
    depthwise = [c for c in conv_nodes(model) if c.group > 1]
    assert len(depthwise) == len(TINY_DECODER_BLURS)
    for conv in depthwise:
        assert conv.weight_shape is not None and conv.weight_shape[1:] == (1, 3, 3)
        assert conv.group == conv.weight_shape[0] == 8
    # the modulated convs are ordinary group-1 convs: one per ModulatedConv2d
    assert len([c for c in conv_nodes(model) if c.group == 1]) == 4


def test_conv_weights_are_constant_initializers(exported):
    _, _, model = exported
    assert computed_conv_weights(model) == []
    initializers = {i.name for i in model.graph.initializer}
    assert all(c.weight in initializers for c in conv_nodes(model))


def test_batch_axis_is_symbolic(exported):
    _, _, model = exported
    axes = dynamic_batch_axes(model)
    assert set(axes) == {"image", "latent", "output"}
    assert all(isinstance(v, str) and v for v in axes.values()), axes
    (output,) = model.graph.output
    assert [d.dim_value for d in output.type.tensor_type.shape.dim[1:]] == [3, 10, 10]


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_cpu_matches_seed_model(exported, tiny_decoder, batch):
    _, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers()[0] == "CPUExecutionProvider"
    image, latent = tiny_inputs(batch, seed=100 + batch)
    (out,) = session.run(None, {"image": image.numpy(), "latent": latent.numpy()})
    with torch.no_grad():
        expected = tiny_decoder(image, latent).numpy()
    assert out.shape == expected.shape == (batch, 3, 10, 10)
    assert relative_l2(out, expected) <= 1e-4


def test_wrong_weights_would_be_caught(exported, tiny_decoder):
    """The parity comparison above is not vacuous: a 1 % change of one conv weight is visible."""
    _, _, model = exported
    conv = next(c for c in conv_nodes(model) if c.group == 1)
    init = next(i for i in model.graph.initializer if i.name == conv.weight)
    values = onnx.numpy_helper.to_array(init).copy()
    values.flat[0] *= 1.01
    values *= 1.01
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image, latent = tiny_inputs(3, seed=7)
    (out,) = session.run(None, {"image": image.numpy(), "latent": latent.numpy()})
    with torch.no_grad():
        assert relative_l2(out, tiny_decoder(image, latent).numpy()) > 1e-4


def test_failed_export_leaves_no_file_and_keeps_good_one(tiny_decoder, tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous good file")
    bad_args = (torch.randn(2, 5, 10, 10), torch.randn(2, 16))  # wrong channel count
    with pytest.raises(ExportError, match="rejects the example inputs"):
        export_onnx(tiny_decoder, bad_args, target, exporter="torchscript")
    assert target.read_bytes() == b"previous good file"
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_missing_output_directory(tiny_decoder, tiny_args, tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(tiny_decoder, tiny_args, tmp_path / "nope" / "out.onnx", exporter="torchscript")


def test_output_parent_is_a_file(tiny_decoder, tiny_args, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="is not a directory"):
        export_onnx(tiny_decoder, tiny_args, tmp_path / "afile" / "out.onnx", exporter="torchscript")


def test_opset_bounds(tiny_decoder, tiny_args, tmp_path):
    top = max_supported_opset("torchscript")
    assert DEFAULT_OPSET <= top
    with pytest.raises(ExportError, match="not supported"):
        export_onnx(tiny_decoder, tiny_args, tmp_path / "x.onnx", exporter="torchscript", opset=top + 1)
    path = export_onnx(tiny_decoder, tiny_args, tmp_path / "x.onnx", exporter="torchscript", opset=17)
    assert onnx.load(str(path)).opset_import[0].version == 17


def test_batch_one_example_still_dynamic(tiny_decoder, tmp_path):
    image, latent = tiny_inputs(1, seed=3)
    path = export_onnx(tiny_decoder, (image, latent), tmp_path / "b1.onnx", exporter="torchscript")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image, latent = tiny_inputs(4, seed=4)
    (out,) = session.run(None, {"image": image.numpy(), "latent": latent.numpy()})
    with torch.no_grad():
        assert relative_l2(out, tiny_decoder(image, latent).numpy()) <= 1e-4


def test_stock_legacy_export_of_seed_layer_fails(tiny_decoder, tiny_args, tmp_path):
    """The problem this toolkit solves: without the rewrite the seed layer does not export with a dynamic batch."""
    with pytest.raises(Exception):  # noqa: B017 (any exporter error is the point)
        torch.onnx.export(
            tiny_decoder,
            tiny_args,
            str(tmp_path / "stock.onnx"),
            dynamo=False,
            input_names=["image", "latent"],
            dynamic_axes={"image": {0: "b"}, "latent": {0: "b"}},
        )
    with pytest.raises(ExportError):
        export_onnx(tiny_decoder, tiny_args, tmp_path / "norewrite.onnx", exporter="torchscript", rewrite=False)
    assert not (tmp_path / "norewrite.onnx").exists()


def test_output_file_follows_umask(tiny_decoder, tiny_args, tmp_path):
    old = os.umask(0o022)
    try:
        path = export_onnx(tiny_decoder, tiny_args, tmp_path / "perm.onnx", exporter="torchscript")
    finally:
        os.umask(old)
    assert (os.stat(path).st_mode & 0o777) == 0o644
