"""Function lowerings: the seed BlurFunction exports unrewritten (legacy exporter, even without autograd
inlining; dynamo through a custom op), and users can register lowerings for their own Functions."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import pytest
import torch
import torch.nn as nn

from modconv_export import LoweringError, export_onnx, register_function_lowering, unregister_function_lowering
from modconv_export.export.checks import conv_nodes, non_standard_ops
from modconv_export.layers.seed import Blur, BlurFunction
from modconv_export.rewrite.registry import registered_rule
from modconv_export.symbolic import lowerings_for, lowerings_installed

from fixtures.user_layers.my_stylegan import Smooth, SmoothFn
from helpers import relative_l2


class TwoBlurs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Blur(4), Blur(4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _run(path_or_proto, x):
    data = path_or_proto if isinstance(path_or_proto, (bytes, str)) else path_or_proto.SerializeToString()
    session = ort.InferenceSession(str(data) if isinstance(data, str) else data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _assert_blur_convs(model: onnx.ModelProto, count: int, channels: int):
    assert non_standard_ops(model) == []
    convs = conv_nodes(model)
    assert len(convs) == count
    for conv in convs:
        assert conv.group == channels and conv.weight_is_initializer and conv.weight_shape == (channels, 1, 3, 3)
    pads = [onnx.helper.get_attribute_value(a) for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
    assert pads == [[1, 1, 1, 1]] * count


def test_legacy_symbolic_for_unrewritten_seed_blur_without_inlining():
    model = TwoBlurs().eval()
    x = torch.randn(2, 4, 6, 6)
    # Without the toolkit, a Function without symbolic cannot be exported when inlining is off.
    with pytest.raises(Exception):  # noqa: B017 (any exporter error is the point)
        torch.onnx.export(
            model, (x,), io.BytesIO(), dynamo=False, autograd_inlining=False, operator_export_type=torch.onnx.OperatorExportTypes.ONNX
        )
        raise AssertionError("exported a PythonOp")  # pragma: no cover  (ensures the block fails either way)
    assert BlurFunction not in [lw.function for lw in lowerings_for(model, (x,))]  # nothing says which modules are blurs
    lowerings = lowerings_for(model, (x,), registered_rule("blur").looks_like)
    assert [lw.function for lw in lowerings] == [BlurFunction]
    buffer = io.BytesIO()
    with lowerings_installed(lowerings, "torchscript", 18):
        assert "symbolic" in BlurFunction.__dict__
        torch.onnx.export(model, (x,), buffer, dynamo=False, autograd_inlining=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    assert "symbolic" not in BlurFunction.__dict__  # removed afterwards
    # equal kernels are deduplicated behind an Identity by the legacy exporter; the toolkit folds it
    proto = onnxscript.optimizer.optimize(onnx.load_from_string(buffer.getvalue()))
    _assert_blur_convs(proto, 2, 4)
    x5 = torch.randn(5, 4, 6, 6)
    assert relative_l2(_run(buffer.getvalue(), x5), model(x5).numpy()) <= 1e-6


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_onnx_without_rewrite_uses_the_lowering(exporter, tmp_path):
    model = TwoBlurs().eval()
    x = torch.randn(2, 4, 6, 6)
    path = export_onnx(model, (x,), tmp_path / "blur.onnx", exporter=exporter, rewrite=False)
    _assert_blur_convs(onnx.load(str(path)), 2, 4)
    x3 = torch.randn(3, 4, 6, 6)
    assert relative_l2(_run(str(path), x3), model(x3).numpy()) <= 1e-6
    assert BlurFunction.forward.__qualname__ == "BlurFunction.forward"  # dynamo patch undone


def test_user_copy_with_setup_context_function_exports_unrewritten(tmp_path):
    model = nn.Sequential(Smooth(3)).eval()
    x = torch.randn(2, 3, 5, 5)
    path = export_onnx(model, (x,), tmp_path / "smooth.onnx", exporter="dynamo", rewrite=False)
    _assert_blur_convs(onnx.load(str(path)), 1, 3)
    assert SmoothFn.forward.__qualname__ == "SmoothFn.forward"


class MyReLU(torch.autograd.Function):
    """The seed tutorial's ReLU Function, in today's static-method form."""

    @staticmethod
    def forward(ctx, input_):
        ctx.save_for_backward(input_)
        return input_.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (input_,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input_ < 0] = 0
        return grad_input


class UsesMyReLU(nn.Module):
    def forward(self, x):
        return MyReLU.apply(x * 2.0) - 1.0


@pytest.fixture
def relu_lowering():
    @register_function_lowering(MyReLU)
    def relu(op, x):
        return op.Relu(x)

    yield relu
    unregister_function_lowering(MyReLU)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_user_registered_lowering_both_exporters(exporter, relu_lowering, tmp_path):
    x = torch.randn(4, 7)
    path = export_onnx(UsesMyReLU(), (x,), tmp_path / "relu.onnx", exporter=exporter)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Relu") == 1 and "Clip" not in ops and "Max" not in ops
    assert non_standard_ops(model) == []
    x2 = torch.randn(3, 7)
    np.testing.assert_allclose(_run(str(path), x2), UsesMyReLU()(x2).numpy(), rtol=1e-6, atol=1e-6)
    assert "symbolic" not in MyReLU.__dict__ and MyReLU.forward.__qualname__ == "MyReLU.forward"


def test_without_registration_the_function_is_traced_through(tmp_path):
    x = torch.randn(4, 7)
    path = export_onnx(UsesMyReLU(), (x,), tmp_path / "relu.onnx", exporter="torchscript")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Relu" not in ops and ("Clip" in ops or "Max" in ops)  # forward's clamp(min=0), not the lowering
    x3 = torch.randn(3, 7)  # and it computes the Function, at another batch size
    np.testing.assert_allclose(_run(str(path), x3), UsesMyReLU()(x3).numpy(), rtol=1e-6, atol=1e-6)


def test_patches_are_undone_on_error(relu_lowering):
    with pytest.raises(RuntimeError, match="boom"):
        with lowerings_installed(lowerings_for(UsesMyReLU(), (torch.randn(2, 3),)), "dynamo", 18):
            assert MyReLU.forward.__qualname__ != "MyReLU.forward"
            raise RuntimeError("boom")
    assert MyReLU.forward.__qualname__ == "MyReLU.forward"


def test_registry_rejects_bad_registrations(relu_lowering):
    with pytest.raises(LoweringError, match="already has a lowering"):
        register_function_lowering(MyReLU, lambda op, x: op.Relu(x))
    with pytest.raises(LoweringError, match="Function subclass"):
        register_function_lowering(nn.ReLU, lambda op, x: op.Relu(x))
    with pytest.raises(LoweringError, match="callable"):
        register_function_lowering(BlurFunction, 42)
