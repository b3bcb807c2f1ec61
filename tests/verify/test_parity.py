"""Parity harness: it passes on correct exports and, above all, fails on wrong ones.

The model is small (three seed ModulatedConv2d layers with up/downsampling and a seed Blur, 8x8 RGB
images); exports are shared per module. Every failure test edits a correct file or swaps its weights
and checks that the report turns red with numbers far beyond the limit.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from modconv_export import ModconvExportError, export_onnx, export_torchscript, make_exportable
from modconv_export.export.checks import conv_nodes
from modconv_export.layers.seed import Blur, ModulatedConv2d
from modconv_export.verify import (
    DEFAULT_REL_L2,
    EagerRunner,
    OnnxRuntimeRunner,
    ParityReport,
    RunnerUnavailable,
    TorchScriptRunner,
    check_parity,
    compare,
    resolve_tolerance,
)
from modconv_export.verify.report import ParityRow
from modconv_export.verify.testing import assert_parity

LATENT = 16
CUDA_HERE = torch.cuda.is_available()


class TinyGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = ModulatedConv2d(3, 8, 3, upsample=True, latent_dim=LATENT)
        self.down = ModulatedConv2d(8, 8, 3, downsample=True, latent_dim=LATENT, padding_type="zero")
        self.blur = Blur(8)
        self.to_rgb = ModulatedConv2d(8, 3, 1, latent_dim=LATENT)

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        x = self.down(self.up(image, latent), latent)
        return self.to_rgb(self.blur(x), latent)


def build(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return TinyGenerator().eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build(0)


@pytest.fixture(scope="module")
def args() -> tuple:
    gen = torch.Generator().manual_seed(123)
    return torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, LATENT, generator=gen)


@pytest.fixture(scope="module")
def files(model, args, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("parity")
    return {
        "legacy": export_onnx(model, args, d / "legacy.onnx", exporter="torchscript"),
        "dynamo": export_onnx(model, args, d / "dynamo.onnx"),
        "torchscript": export_torchscript(model, args, d / "model.pt"),
        "other_seed": export_onnx(build(1), args, d / "other_seed.onnx", exporter="torchscript"),
        "fixed_batch": export_onnx(model, args, d / "fixed.onnx", exporter="torchscript", dynamic_batch=False),
        "fp16": export_onnx(
            make_exportable(model).half(), tuple(a.half() for a in args), d / "fp16.onnx", exporter="torchscript", rewrite=False
        ),
    }


@pytest.fixture(scope="module")
def good_report(model, args, files) -> ParityReport:
    return check_parity(model, args, onnx_path=files["legacy"], torchscript_path=files["torchscript"])


def rows(report: ParityReport, backend: str) -> list[ParityRow]:
    return [r for r in report.rows if r.backend == backend]


def edit_conv_weight(src, dst, edit) -> str:
    """Apply ``edit(array)`` in place to the first full (non-depthwise) convolution weight of ``src``."""
    proto = onnx.load(str(src))
    name = next(c.weight for c in conv_nodes(proto) if c.group == 1 and c.weight_shape and c.weight_shape[1] > 1)
    init = next(i for i in proto.graph.initializer if i.name == name)
    array = numpy_helper.to_array(init).copy()
    edit(array)
    init.CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(proto, str(dst))
    return name


# --------------------------------------------------------------------------- correct exports pass


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_correct_export_passes_at_batch_1_and_3(model, args, files, exporter):
    report = check_parity(model, args, onnx_path=files[exporter], providers=("cpu",))
    assert report.passed, report.format_table()
    ort_rows = rows(report, "ort-cpu")
    assert [r.batch for r in ort_rows] == [1, 3]  # neither is the export's example batch (2)
    for r in ort_rows:
        assert r.status == "pass" and r.rel_l2 < 1e-5 and r.cosine > 0.999999 and r.nan_count == 0
        assert r.psnr > 100 and r.time_ms > 0


def test_all_cpu_backends_run_and_cuda_rows_say_why_not(good_report):
    report = good_report
    assert report.passed, report.format_table()
    for backend in ("eager-cpu", "torchscript-cpu", "ort-cpu"):
        assert [(r.status, r.batch) for r in rows(report, backend)] == [("pass", 1), ("pass", 3)]
    if CUDA_HERE:
        pytest.skip("a CUDA device is present: the CUDA rows ran")
    for backend in ("eager-original-cuda", "eager-cuda", "torchscript-cuda"):
        (row,) = rows(report, backend)
        assert row.status == "not run" and "CUDA unavailable" in row.reason
    (ort_cuda,) = rows(report, "ort-cuda")
    assert ort_cuda.status == "not run" and ort_cuda.reason.startswith("CUDA provider unavailable")
    assert "NOT RUN | ort-cuda" in report.format_table()


def test_dynamic_batch_is_proven_by_other_batch_sizes(model, args, files):
    report = check_parity(model, args, onnx_path=files["fixed_batch"], providers=("cpu",))
    assert not report.passed
    assert [(r.batch, r.status) for r in rows(report, "ort-cpu")] == [(1, "fail"), (3, "fail")]
    assert all("inference failed" in r.reason for r in rows(report, "ort-cpu"))
    same_batch = check_parity(model, args, onnx_path=files["fixed_batch"], providers=("cpu",), batch_sizes=(2,))
    assert same_batch.passed, same_batch.format_table()


# --------------------------------------------------------------------------- it must be able to fail


@pytest.mark.parametrize("nudge", ["one element", "whole tensor"])
def test_weight_nudged_by_one_percent_fails(model, args, files, tmp_path, nudge):
    def edit(w):
        if nudge == "one element":
            w.flat[np.argmax(np.abs(w))] *= 1.01
        else:
            w *= 1.01

    edit_conv_weight(files["legacy"], tmp_path / "nudged.onnx", edit)
    report = check_parity(model, args, onnx_path=tmp_path / "nudged.onnx", providers=("cpu",))
    assert not report.passed
    assert {r.backend for r in report.failures} == {"ort-cpu"}
    for r in rows(report, "ort-cpu"):
        assert r.status == "fail" and r.rel_l2 > 3 * DEFAULT_REL_L2[("cpu", "fp32")]
    assert "FAILED" in report.format_table().splitlines()[-1]


def test_export_of_a_different_random_seed_fails(model, args, files):
    report = check_parity(model, args, onnx_path=files["other_seed"], providers=("cpu",))
    assert not report.passed
    for r in rows(report, "ort-cpu"):
        assert r.status == "fail" and r.rel_l2 > 0.1 and r.cosine < 0.99


def test_nan_in_output_fails_and_still_writes_valid_json(model, args, files, tmp_path):
    edit_conv_weight(files["legacy"], tmp_path / "nan.onnx", lambda w: w.__setitem__((0, 0, 0, 0), np.nan))
    report = check_parity(model, args, onnx_path=tmp_path / "nan.onnx", providers=("cpu",))
    assert not report.passed
    for r in rows(report, "ort-cpu"):
        assert r.status == "fail" and r.nan_count > 0 and "NaN" in r.reason and math.isnan(r.rel_l2)
    data = json.loads(report.write_json(tmp_path / "nan.json").read_text())  # strict JSON: no bare NaN
    assert data["passed"] is False
    assert ParityReport.read_json(tmp_path / "nan.json").rows[-1].nan_count > 0


def test_passed_is_false_when_only_eager_rows_ran(model, args):
    report = check_parity(model, args, providers=("cpu",))
    assert [r.status for r in rows(report, "eager-cpu")] == ["pass", "pass"]
    assert {r.reason for r in report.rows if not r.ran} == {"no TorchScript file given", "no ONNX file given"}
    assert not report.passed and "no exported backend ran" in report.summary


# --------------------------------------------------------------------------- ONNX Runtime CUDA fallback


class _CpuSession:
    """A real CPU session standing in for onnxruntime.InferenceSession; ``claims`` is what it reports."""

    claims = ["CPUExecutionProvider"]

    def __init__(self, path, sess_options=None, providers=None, **kwargs):
        self._session = _REAL_SESSION(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    def get_providers(self):
        return list(self.claims)

    def __getattr__(self, name):
        return getattr(self._session, name)


_REAL_SESSION = ort.InferenceSession


def test_ort_cuda_falling_back_to_cpu_is_never_a_pass(model, args, files, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _CpuSession)
    with pytest.raises(RunnerUnavailable, match="CUDA provider unavailable"):
        OnnxRuntimeRunner(files["legacy"], "cuda").prepare()
    report = check_parity(model, args, onnx_path=files["legacy"], providers=("cuda",))
    (row,) = rows(report, "ort-cuda")
    assert row.status == "not run" and "fell back to CPUExecutionProvider" in row.reason
    assert "ort-cuda" not in report.providers
    if not CUDA_HERE:
        assert not report.passed  # nothing exported ran

    # Control: the same session claiming CUDA first is accepted, so the gate is the provider list.
    monkeypatch.setattr(_CpuSession, "claims", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    report = check_parity(model, args, onnx_path=files["legacy"], providers=("cuda",))
    assert [r.status for r in rows(report, "ort-cuda")] == ["pass", "pass"]
    assert report.providers["ort-cuda"][0] == "CUDAExecutionProvider"


@pytest.mark.skipif(CUDA_HERE, reason="a CUDA device is present")
def test_real_ort_cuda_runner_reports_unavailable_here(files):
    with pytest.raises(RunnerUnavailable, match="^CUDA provider unavailable"):
        OnnxRuntimeRunner(files["legacy"], "cuda").prepare()


# --------------------------------------------------------------------------- fp16, inputs, errors


def test_fp16_rows(model, args, files):
    on_fp32_file = check_parity(model, args, onnx_path=files["legacy"], providers=("cpu",), precision="fp16")
    (row,) = rows(on_fp32_file, "ort-cpu")
    assert row.status == "not run" and "no fp16 ONNX file" in row.reason
    (eager,) = rows(on_fp32_file, "eager-cpu")
    assert eager.status == "not run" and "CUDA only" in eager.reason
    assert not on_fp32_file.passed

    report = check_parity(model, args, onnx_path=files["fp16"], providers=("cpu",), precision="fp16")
    assert report.passed, report.format_table()
    for r in rows(report, "ort-cpu"):
        # genuinely half precision: far above fp32 rounding, well inside the fp16 limit
        assert r.status == "pass" and 1e-5 < r.rel_l2 < 1e-2 and r.rel_l2_limit == 1e-2 and r.inf_count == 0
    as_fp32 = check_parity(model, args, onnx_path=files["fp16"], providers=("cpu",))
    assert "computes in float16" in rows(as_fp32, "ort-cpu")[0].reason


def test_fp16_export_with_float32_io_is_checked_as_fp16(model, args, tmp_path):
    path = export_onnx(model, args, tmp_path / "half.onnx", exporter="torchscript", precision="fp16")
    report = check_parity(model, args, onnx_path=path, providers=("cpu",), precision="fp16")
    assert report.passed, report.format_table()
    (first,) = rows(report, "ort-cpu")[:1]
    assert 1e-5 < first.rel_l2 < 1e-2
    as_fp32 = check_parity(model, args, onnx_path=path, providers=("cpu",))
    assert "computes in float16" in rows(as_fp32, "ort-cpu")[0].reason and not as_fp32.passed


def test_make_inputs_callable_and_seeds(model, args, files):
    calls = []

    def make_inputs(batch, seed):
        calls.append((batch, seed))
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(batch, 3, 8, 8, generator=gen) * 2 - 1, torch.randn(batch, LATENT, generator=gen)

    report = check_parity(model, args, onnx_path=files["legacy"], providers=("cpu",), make_inputs=make_inputs, seed=5)
    assert report.passed, report.format_table()
    assert [b for b, _ in calls] == [1, 3] and len({s for _, s in calls}) == 2
    again = check_parity(model, args, onnx_path=files["legacy"], providers=("cpu",), seed=5)
    assert [r.rel_l2 for r in again.rows] == [
        r.rel_l2 for r in check_parity(model, args, onnx_path=files["legacy"], providers=("cpu",), seed=5).rows
    ]


def test_usage_errors(model, args, tmp_path):
    with pytest.raises(ModconvExportError, match="not found"):
        check_parity(model, args, onnx_path=tmp_path / "missing.onnx")
    with pytest.raises(ModconvExportError, match="original model fails"):
        check_parity(model, (torch.randn(1, 5, 8, 8), torch.randn(1, LATENT)))
    with pytest.raises(ModconvExportError, match="precision"):
        check_parity(model, args, precision="int8")
    with pytest.raises(ModconvExportError, match="providers"):
        check_parity(model, args, providers=("tpu",))


def test_options_object_and_keywords_give_the_same_rows(model, args, files, good_report):
    """The command line's ParityOptions and the Python API's keywords are one path: the same rows, numbers
    and files; both at once, or an unknown keyword, are refused before anything runs."""
    from modconv_export.verify import ParityOptions

    options = ParityOptions(onnx_path=files["legacy"], torchscript_path=files["torchscript"])
    report = check_parity(model, args, options)
    assert report.files == good_report.files and report.tolerances == good_report.tolerances
    assert [(r.backend, r.batch, r.output, r.status, r.rel_l2) for r in report.rows] == [
        (r.backend, r.batch, r.output, r.status, r.rel_l2) for r in good_report.rows
    ]
    with pytest.raises(TypeError, match="not both"):
        check_parity(model, args, options, seed=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_size'"):
        check_parity(model, args, batch_size=(1,))
    assert ParityOptions(providers="cpu,CUDAExecutionProvider", batch_sizes=(3, 1, 3)).checked().batch_sizes == (3, 1)


def test_tolerance_overrides(model, args, files, tmp_path):
    edit_conv_weight(files["legacy"], tmp_path / "nudged.onnx", lambda w: w.__imul__(1.01))
    loose = check_parity(model, args, onnx_path=tmp_path / "nudged.onnx", providers=("cpu",), max_rel_l2={"ort-cpu": 0.1})
    assert loose.passed and loose.tolerances["ort-cpu"]["rel_l2"] == 0.1 and loose.tolerances["eager-cpu"]["rel_l2"] == 1e-4
    strict = check_parity(model, args, onnx_path=files["legacy"], providers=("cpu",), atol=1e-12)
    assert not strict.passed and "elements outside atol 1e-12 + rtol 0e+00" in strict.failures[0].reason
    assert resolve_tolerance("ort-cuda", "fp32").rel_l2 == 5e-3
    assert resolve_tolerance("torchscript-cpu", "fp16").rel_l2 == 1e-2
    assert resolve_tolerance("ort-cuda", "fp32", max_rel_l2={"cuda": 1e-3}).rel_l2 == 1e-3
    tol = resolve_tolerance("ort-cuda", "fp32", rtol={"cuda": 1e-3}, atol=1e-5)
    assert (tol.rel_l2, tol.rtol, tol.atol, tol.band()) == (5e-3, 1e-3, 1e-5, (1e-3, 1e-5))


def test_rtol_atol_are_element_wise_allclose(model, args, files, tmp_path):
    """--rtol/--atol mean what they mean in numpy/torch: |out - ref| <= atol + rtol*|ref| for every element."""
    edit_conv_weight(files["legacy"], tmp_path / "nudged.onnx", lambda w: w.__imul__(1.01))
    wide = check_parity(model, args, onnx_path=tmp_path / "nudged.onnx", providers=("cpu",), max_rel_l2=1.0, rtol=0.5, atol=0.5)
    narrow = check_parity(model, args, onnx_path=tmp_path / "nudged.onnx", providers=("cpu",), max_rel_l2=1.0, rtol=1e-4, atol=1e-6)
    ort_wide = [r for r in wide.rows if r.backend == "ort-cpu"]
    ort_narrow = [r for r in narrow.rows if r.backend == "ort-cpu"]
    assert all(r.status == "pass" and r.outside_band == 0 for r in ort_wide)
    assert all(r.status == "fail" and r.outside_band > 0 for r in ort_narrow)
    row = ort_narrow[0]
    assert (row.rtol_limit, row.atol_limit, row.rel_l2_limit) == (1e-4, 1e-6, 1.0)
    data = narrow.to_json()["rows"][2]
    assert {"rtol_limit", "atol_limit", "rel_l2_limit", "outside_band"} <= set(data)
    # the eager rows, a correct rewrite, pass the same narrow band: the band is per element, not global
    assert all(r.status == "pass" for r in narrow.rows if r.backend == "eager-cpu")


@pytest.mark.parametrize("rtol, atol", [(1e-3, 0.0), (0.0, 1e-3), (1e-2, 1e-4)])
def test_band_count_agrees_with_numpy_and_torch(rtol, atol):
    gen = torch.Generator().manual_seed(0)
    expected = torch.randn(4, 3, 8, 8, generator=gen)
    actual = expected + torch.randn(expected.shape, generator=gen) * 2e-3
    m = compare(actual, expected, rtol=rtol, atol=atol)
    assert m.outside_band == int((~np.isclose(actual.numpy(), expected.numpy(), rtol=rtol, atol=atol)).sum())
    assert 0 < m.outside_band < m.numel
    with pytest.raises(AssertionError):
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    edge = expected + (atol + rtol * expected.abs()) * 0.999  # inside the band everywhere
    assert compare(edge, expected, rtol=rtol, atol=atol).outside_band == 0
    torch.testing.assert_close(edge, expected, rtol=rtol, atol=atol)
    assert compare(actual, expected).outside_band is None


# --------------------------------------------------------------------------- report, JSON, assert_parity


def test_json_report_round_trips_with_versions_and_providers(good_report, tmp_path):
    path = good_report.write_json(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["passed"] is True
    assert data["versions"]["torch"] == torch.__version__
    assert data["versions"]["onnx"] == onnx.__version__
    assert data["versions"]["onnxruntime"] == ort.__version__
    assert data["providers"]["ort-cpu"] == ["CPUExecutionProvider"]
    assert data["providers"]["eager-cpu"] == ["torch:cpu"]
    if not CUDA_HERE:
        assert "ort-cuda" not in data["providers"]  # it never ran, so it used nothing
    assert data["tolerances"]["ort-cpu"]["rel_l2"] == 1e-4
    assert len(data["rows"]) == len(good_report.rows)
    back = ParityReport.read_json(path)
    assert back.rows == good_report.rows and back.passed and back.versions == good_report.versions
    assert back.format_table() == good_report.format_table()


def test_table_has_one_line_per_row(good_report):
    lines = good_report.format_table().splitlines()
    row_lines = [ln for ln in lines if ln.split(" |")[0].strip() in ("PASSED", "FAILED", "NOT RUN")]
    assert len(row_lines) == len(good_report.rows)
    first = next(ln for ln in row_lines if "ort-cpu" in ln and "b=3" in ln)
    assert first.startswith("PASSED") and "| output |" in first and "≤ 1e-04" in first


def test_assert_parity_raises_with_the_table(model, args, files, tmp_path):
    report = assert_parity(model, args, onnx_path=files["legacy"], providers=("cpu",))
    assert report.passed
    edit_conv_weight(files["legacy"], tmp_path / "nudged.onnx", lambda w: w.__imul__(1.01))
    with pytest.raises(AssertionError) as info:
        assert_parity(model, args, onnx_path=tmp_path / "nudged.onnx", providers=("cpu",))
    message = str(info.value)
    assert "FAILED  | ort-cpu" in message and "rel-L2" in message and "> 1e-04" in message


# --------------------------------------------------------------------------- runners and metrics


def test_runners_share_one_interface(model, args, files):
    inputs = tuple(a[:1] for a in args)
    expected = model(*inputs).detach().numpy()
    runners = [EagerRunner(make_exportable(model)), TorchScriptRunner(files["torchscript"]), OnnxRuntimeRunner(files["legacy"])]
    for runner in runners:
        with runner:
            (out,) = runner.infer(inputs)
        assert compare(out, expected).rel_l2 < 1e-5, runner.name
    model.train()
    try:
        with EagerRunner(model) as runner:
            runner.infer(inputs)
        assert model.training  # the caller's mode is restored
    finally:
        model.eval()


def test_metrics_known_values():
    rng = np.random.default_rng(0)
    e = rng.uniform(0.5, 1.5, size=(2, 3, 4, 4))
    m = compare(e * 1.01, e)
    assert m.rel_l2 == pytest.approx(0.01) and m.max_rel == pytest.approx(0.01) and m.cosine == pytest.approx(1.0)
    assert m.max_abs == pytest.approx(0.01 * e.max())
    offset = compare(e + 0.1, e)
    assert offset.psnr == pytest.approx(10 * np.log10((e.max() - e.min()) ** 2 / 0.01))
    assert compare(e[:, 0, 0], e[:, 0, 0]).psnr is None  # not an image
    assert compare(-e, e).cosine == pytest.approx(-1.0)
    bad = e.copy()
    bad[0, 0, 0, 0], bad[0, 0, 0, 1] = np.nan, np.inf
    m = compare(bad, e)
    assert (m.nan_count, m.inf_count) == (1, 1) and math.isnan(m.rel_l2)
    ok, verdict = resolve_tolerance("ort-cpu", "fp32").judge(m)
    assert not ok and "NaN" in verdict
    with pytest.raises(ValueError, match="shape"):
        compare(e[:1], e)


def test_tf32_switch_is_local_and_restored():
    from modconv_export.verify.runners import _tf32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with pytest.raises(RuntimeError):
        with _tf32(False):
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
            raise RuntimeError("restored even on error")
    assert (conv.fp32_precision, matmul.fp32_precision) == before


class _Doubling(torch.autograd.Function):
    """A Python autograd Function: a plain TorchScript trace records it as prim::PythonOp; the graph
    capture traces through its forward."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class _RawMemory(torch.autograd.Function):
    """Reads raw memory as a compiled extension does: no trace of any kind can follow it."""

    @staticmethod
    def forward(ctx, x):
        assert x.data_ptr() != 0
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class _CallsFunction(nn.Module):
    def __init__(self, function=_Doubling) -> None:
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function.apply(x) + 1


def test_torchscript_traced_in_memory(model, args, files):
    """Without a TorchScript file the TorchScript rows still run, on a trace kept in memory."""
    report = check_parity(model, args, onnx_path=files["legacy"], providers=("cpu",), trace_torchscript=True)
    rows = [r for r in report.rows if r.backend == "torchscript-cpu"]
    assert report.passed and [r.batch for r in rows] == [1, 3] and all(r.status == "pass" and r.rel_l2 < 1e-5 for r in rows)
    assert report.files["torchscript"] == "(in-memory trace)"
    with pytest.raises(ModconvExportError, match="not both"):
        check_parity(model, args, torchscript_path=files["torchscript"], trace_torchscript=True)
    traced_through = check_parity(_CallsFunction(), torch.randn(1, 4), providers=("cpu",), trace_torchscript=True)
    assert all(r.status == "pass" for r in traced_through.rows if r.backend == "torchscript-cpu")
    untraceable = check_parity(_CallsFunction(_RawMemory), torch.randn(1, 4), providers=("cpu",), trace_torchscript=True)
    row = next(r for r in untraceable.rows if r.backend == "torchscript-cpu")
    assert row.status == "not run" and "in-memory TorchScript trace failed" in row.reason and "_RawMemory.forward" in row.reason


def test_report_keeps_the_inputs_and_reference_outputs(model, args, files):
    report = check_parity(model, args, onnx_path=files["legacy"], providers=("cpu",), batch_sizes=(2, 1))
    data = report.data
    assert list(data.inputs) == [2, 1] and data.reference == "eager-original-cpu" and data.output_names == ["output"]
    with torch.no_grad():
        expected = model(*map(torch.from_numpy, data.inputs[2]))
    assert np.array_equal(data.expected[2][0], expected.numpy())
    assert data.inputs[2][0].shape[0] == 2 and set(data.times_ms) == {1, 2}


class _CountingRunner:
    """A backend that only counts its runs (the harness's timing loop needs nothing else)."""

    def __init__(self) -> None:
        self.runs = 0

    def infer(self, inputs):
        self.runs += 1
        return [np.zeros(1, dtype=np.float32)]


@pytest.mark.parametrize("budget_s, runs", [(0.0, 1), (60.0, 3)], ids=["slow-backend", "fast-backend"])
def test_a_batch_runs_again_only_while_its_runs_are_short(monkeypatch, budget_s, runs):
    """Verification costs one run per backend and batch once a run takes long; short ones give a median."""
    from modconv_export.verify import run

    monkeypatch.setattr(run, "REPEAT_BUDGET_S", budget_s)
    runner = _CountingRunner()
    outputs, ms = run.timed(runner, (), repeats=3)
    assert runner.runs == runs and len(outputs) == 1 and ms >= 0
