"""benchmarks/gpu_check.py, the one-call GPU matrix: what can be checked without a GPU.

The CUDA rows themselves need a GPU machine; here: the run without one writes its JSON saying why,
the target arithmetic, the kernel classification and the I/O-bound ORT runner (on the CPU provider).
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from helpers import ROOT


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module, with its folder on ``sys.path`` as when it runs (it imports ``_gpu_runtime``
    and ``_gpu_report`` beside it)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in ("gpu_check", "_gpu_runtime", "_gpu_report"):
            sys.modules.pop(name, None)
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the real matrix would run")
def test_without_cuda_the_json_says_why(gpu_check, tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "not run: no CUDA device on this machine"
    assert result["environment"]["torch"] == torch.__version__
    assert result["parity"] == [] and result["speed"] == []


def _row(name: str, batch: int, ms: float) -> dict:
    return {"model": "lats", "row": name, "batch": batch, "status": "ok", "median_ms": ms}


def test_targets_use_the_largest_batch_and_the_best_fp16_row(gpu_check):
    rows = [
        _row("eager-seed-cuda-fp32", 8, 10.0),
        _row("ort-cuda-fp16-iobinding", 8, 1.0),
        _row("eager-seed-cuda-fp32", 32, 30.0),
        _row("compile-rewritten-cuda-fp16", 32, 9.0),
        _row("ort-cuda-fp16-iobinding", 32, 12.0),
        _row("ort-cuda-fp16-cudagraph", 32, 8.0),
        {"model": "lats", "row": "ort-cuda-fp16-nhwc-iobinding", "batch": 32, "status": "not run: x"},
    ]
    t = gpu_check.targets(rows)
    assert t["batch"] == 32 and t["best_ort_fp16_ms"] == 8.0
    assert t["speedup_vs_eager_seed"] == pytest.approx(3.75) and t["meets_3x"]
    assert t["no_slower_than_compile"] and t["ratio_vs_compile_fp16"] == pytest.approx(8 / 9)
    rows[-2]["median_ms"] = rows[-3]["median_ms"] = 11.0  # slower than compile and under 3x
    t = gpu_check.targets(rows)
    assert not t["meets_3x"] and not t["no_slower_than_compile"]
    assert gpu_check.targets([]) == {"status": "not run"}


@pytest.mark.parametrize(
    ("kernel", "kind"),
    [
        ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half>", "layout transpose"),
        ("void onnxruntime::cuda::_BinaryElementWise<float>", "elementwise / other"),
        ("void onnxruntime::cuda::reduce_matrix_rows_kernel<float>", "reduction / norm"),
        ("Memcpy HtoD (Pageable -> Device)", "memory copy"),
    ],
)
def test_kernel_kinds(gpu_check, kernel, kind):
    assert sys.modules["_gpu_report"].kernel_kind(kernel) == kind


def test_bound_runner_feeds_and_fills_its_buffers(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.runtime, "DEVICE", "cpu")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "y"], ["z"])],
        "mul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("x", "y")],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])],
    )
    path = tmp_path / "mul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    session = gpu_check.ort_session(path)
    for shape in (None, (4, 3)):  # ORT-allocated output, then one fixed buffer (the CUDA-graph form)
        binding = gpu_check.ort_bound_runner(session, (x, y), output_shape=shape)()
        np.testing.assert_allclose(binding.get_outputs()[0].numpy(), (x * y).numpy(), rtol=1e-6)
