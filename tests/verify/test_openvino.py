"""OpenVINO as a verified target: f32 and bf16 rows, the bf16 f32-island policy, "not run" with reasons.

Every check compares numbers against the eager model: the f32 rows must be fp32-exact (which also
proves the explicit ``INFERENCE_PRECISION_HINT=f32`` took effect -- OpenVINO's own default on AMX
machines is bf16), the bf16 rows must really be bf16 (errors above fp32's) yet within the bf16
tolerance, and a wrong file must fail. Without OpenVINO, or without native bf16, the rows say why.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from modconv_export import export_onnx, runtimes
from modconv_export.runtimes import openvino_config
from modconv_export.verify import check_parity, resolve_tolerance
from modconv_export.verify.metrics import compare
from modconv_export.verify.openvino_runner import OpenVINORunner
from modconv_export.verify.runners import RunnerUnavailable
from modconv_export.verify.tolerances import BF16_MIN_PSNR, BF16_REL_L2

from helpers import TinyDecoder, randomize, tiny_inputs

needs_openvino = pytest.mark.skipif(bool(runtimes.openvino_unavailable_reason()), reason="OpenVINO not installed")
needs_bf16 = pytest.mark.skipif(bool(runtimes.bf16_unavailable_reason()), reason=runtimes.bf16_unavailable_reason() or "bf16")


def _has_ep() -> bool:
    try:
        import onnxruntime_ep_openvino  # noqa: F401
    except ImportError:
        return False
    return True


class StyleScaled(nn.Module):
    """An image scaled per channel by a deep style MLP: only the vector path is deep, so its precision
    decides the error -- the case the f32-island policy is for."""

    def __init__(self, dim: int = 64, depth: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(dim, dim), nn.LeakyReLU(0.2))])
        self.to_scale = nn.Linear(dim, 3)

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return image * self.to_scale(self.mlp(latent))[:, :, None, None]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = randomize(TinyDecoder(), seed=0)
    args = tiny_inputs(2, 1)
    d = tmp_path_factory.mktemp("openvino")
    return (
        model,
        args,
        export_onnx(model, args, d / "tiny.onnx", exporter="torchscript"),
        export_onnx(randomize(TinyDecoder(), seed=5), args, d / "other.onnx", exporter="torchscript"),
    )


@needs_openvino
@needs_bf16
def test_openvino_rows_pass_f32_exactly_and_bf16_within_its_tolerance(tiny):
    model, args, path, _ = tiny
    report = check_parity(model, args, onnx_path=path, providers=("cpu", "openvino", "openvino-bf16"))
    assert report.passed, report.format_table()
    f32 = [r for r in report.rows if r.backend == "openvino-cpu"]
    bf16 = [r for r in report.rows if r.backend == "openvino-cpu-bf16"]
    assert [r.batch for r in f32] == [1, 3] and [r.batch for r in bf16] == [1, 3]
    assert all(r.status == "pass" and r.rel_l2 < 1e-5 and r.precision == "fp32" for r in f32)
    for r in bf16:  # really bf16 (8-bit mantissa: far above fp32's 1e-7), judged at bf16's limits
        assert r.status == "pass" and r.precision == "bf16" and 1e-4 < r.rel_l2 <= BF16_REL_L2
        assert r.psnr_limit == BF16_MIN_PSNR and r.psnr >= BF16_MIN_PSNR and "PSNR" in r.reason
    assert "style path f32" in report.providers["openvino-cpu-bf16"][0]
    assert report.tolerances["openvino-cpu-bf16"]["rel_l2"] == BF16_REL_L2 and report.tolerances["openvino-cpu"]["rel_l2"] == 1e-4


@needs_openvino
@needs_bf16
def test_a_wrong_file_fails_on_openvino_f32_and_bf16(tiny):
    model, args, _, other = tiny
    report = check_parity(model, args, onnx_path=other, providers=("openvino", "openvino-bf16"))
    assert not report.passed
    ov_rows = [r for r in report.rows if r.backend.startswith("openvino")]
    assert len(ov_rows) == 4 and all(r.status == "fail" and r.rel_l2 > 0.3 for r in ov_rows), report.format_table()


def _fc_precisions(compiled) -> set[str]:
    ops = compiled.get_runtime_model().get_ordered_ops()
    return {op.get_rt_info()["runtimePrecision"].astype(str) for op in ops if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"}


@needs_openvino
@needs_bf16
def test_the_style_path_runs_in_f32_and_lowers_the_bf16_error(tmp_path):
    torch.manual_seed(0)
    model = StyleScaled().eval()
    gen = torch.Generator().manual_seed(1)
    image, latent = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 64, generator=gen)
    path = export_onnx(model, (image, latent), tmp_path / "style.onnx", exporter="torchscript")
    with torch.no_grad():
        expected = model(image, latent)
    plain = runtimes.OpenVINOModel(path, "bf16", f32_islands=False)
    policy = runtimes.OpenVINOModel(path, "bf16")
    assert len(plain.compiled) == 1 and _fc_precisions(plain.compiled[0]) == {"bf16"}
    assert len(policy.compiled) == 2 and _fc_precisions(policy.compiled[0]) == {"f32"} and policy.f32_islands
    errors = {name: compare(m([image.numpy(), latent.numpy()])[0], expected).rel_l2 for name, m in (("plain", plain), ("policy", policy))}
    assert errors["plain"] > 1e-3 and errors["policy"] < errors["plain"] / 10, errors
    assert compare(runtimes.OpenVINOModel(path, "fp32")([image.numpy(), latent.numpy()])[0], expected).rel_l2 < 1e-5


@needs_openvino
def test_a_model_without_a_vector_input_has_no_style_path(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    path = export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "conv.onnx", exporter="torchscript")
    assert runtimes.split_style_path(runtimes.openvino_core().read_model(str(path))) is None


@needs_openvino
@pytest.mark.parametrize("pad, folds", [(nn.ReflectionPad2d(1), 1), (nn.ZeroPad2d(1), 0)], ids=["reflect", "zero"])
def test_nearest_upsampling_folds_into_a_subpixel_convolution_exactly(tmp_path, pad, folds):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), pad, nn.Conv2d(4, 5, 3)).eval()
    path = export_onnx(model, torch.randn(2, 4, 6, 7), tmp_path / "up.onnx", exporter="torchscript")
    folded, kept = runtimes.OpenVINOModel(path, "fp32"), runtimes.OpenVINOModel(path, "fp32", fold_upsampling=False)
    assert (folded.folded, kept.folded) == (folds, 0)
    batch = torch.randn(3, 4, 6, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(batch)
    for m in (folded, kept):
        assert compare(m([batch.numpy()])[0], expected).rel_l2 < 1e-6
    layers = {op.get_rt_info()["layerType"].astype(str) for op in folded.compiled[0].get_runtime_model().get_ordered_ops()}
    assert ("Interpolate" in layers) == (folds == 0)  # folded: nothing is upsampled any more


@needs_openvino
def test_bf16_rows_are_not_run_where_openvino_reports_no_native_bf16(tiny, monkeypatch):
    model, args, path, _ = tiny
    monkeypatch.setattr(openvino_config, "optimization_capabilities", lambda: ["FP32", "INT8"])
    report = check_parity(model, args, onnx_path=path, providers=("openvino", "openvino-bf16"))
    row = next(r for r in report.rows if r.backend == "openvino-cpu-bf16")
    assert row.status == "not run" and "no native bf16" in row.reason and "AMX-BF16 or AVX512-BF16" in row.reason
    assert report.passed  # the f32 rows ran and passed
    with pytest.raises(RunnerUnavailable, match="OPTIMIZATION_CAPABILITIES: FP32 INT8"):
        OpenVINORunner(path, "bf16").prepare()


def test_without_openvino_the_rows_say_how_to_install_it(tiny, monkeypatch):
    model, args, path, _ = tiny
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    report = check_parity(model, args, onnx_path=path, providers=("cpu", "openvino", "openvino-bf16"))
    ov_rows = [r for r in report.rows if r.backend.startswith("openvino")]
    assert len(ov_rows) == 2 and all(
        r.status == "not run" and "OpenVINO not installed" in r.reason and "[openvino]" in r.reason for r in ov_rows
    )
    assert report.passed and report.versions["openvino"]


@pytest.mark.skipif(not _has_ep(), reason="onnxruntime-ep-openvino not installed")
@needs_bf16
def test_onnxruntime_with_the_openvino_execution_provider(tiny):
    model, _, path, _ = tiny
    batch = tiny_inputs(3, 7)
    with torch.no_grad():
        expected = model(*batch)
    errors = {}
    for precision in ("fp32", "bf16"):
        with OpenVINORunner(path, precision, runtime="onnxruntime") as runner:
            assert runner.providers[0].startswith("OpenVINOExecutionProvider") and runner.name.startswith("ort-openvino-cpu")
            errors[precision] = compare(runner.infer(batch)[0], expected).rel_l2
    assert errors["fp32"] < 1e-5 and 1e-4 < errors["bf16"] <= BF16_REL_L2, errors  # load_config's precision is honoured


def test_ep_runner_without_the_plugin_is_not_run(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)
    with pytest.raises(RunnerUnavailable, match="pip install onnxruntime-ep-openvino"):
        OpenVINORunner(tiny[2], "fp32", runtime="onnxruntime").prepare()


def test_bf16_tolerance_judges_rel_l2_and_psnr_on_images_only():
    tol = resolve_tolerance("openvino-cpu-bf16", "bf16")
    assert (tol.rel_l2, tol.min_psnr) == (BF16_REL_L2, BF16_MIN_PSNR)
    gen = torch.Generator().manual_seed(0)
    image = torch.full((1, 3, 16, 16), 0.9)  # a bright image with the full [-1, 1] range: PSNR's peak is 2
    image[0, :, 0, 0] = -1.0
    noise = torch.randn(image.shape, generator=gen)
    fine = compare(image + 0.02 * noise, image)  # rel ~2e-2, ~40 dB: a good bf16 result
    assert tol.judge(fine)[0] and "PSNR" in tol.judge(fine)[1]
    dim = compare(image + 0.075 * noise, image)  # rel ~0.08 passes the rel-L2 limit, but ~28.5 dB is too noisy
    assert dim.rel_l2 < BF16_REL_L2 and dim.psnr < BF16_MIN_PSNR
    ok, verdict = tol.judge(dim)
    assert not ok and f"< {BF16_MIN_PSNR:.0f} dB" in verdict
    vector = compare((image + 0.075 * noise).reshape(1, -1), image.reshape(1, -1))  # not an image: no PSNR
    assert vector.psnr is None and tol.judge(vector) == (True, f"rel-L2 {vector.rel_l2:.1e} ≤ 1e-01")
    assert resolve_tolerance("openvino-cpu-bf16", "bf16", max_rel_l2=0.5).min_psnr is None  # an override replaces both
    with pytest.raises(ValueError, match="no bf16 tolerance for cuda"):
        resolve_tolerance("ort-cuda", "bf16")
