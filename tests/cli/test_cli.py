"""``modconv-export``: end to end in a subprocess (as users run it), and every bad input as one line.

Exports are slow, so each successful run is a module-scoped fixture that several tests read. The
bad-input table runs ``main()`` in-process (same code, captured at the file-descriptor level); the
cases that matter at process level (the console script itself, a malicious pickle, an export that
fails inside the exporter, an interrupt) run in a subprocess.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import modconv_export
from modconv_export import export_onnx, rewrite_model, save_checkpoint
from modconv_export._util.memory import format_bytes
from modconv_export.cli import UsageError, main, parse_input
from modconv_export.export.metadata import read_properties
from modconv_export.families import get_family
from modconv_export.runtimes import bf16_unavailable_reason

from helpers import FIXTURES, TESTS, relative_l2

FOREIGN_LAYERS = FIXTURES / "foreign_layers"
SCRIPT = Path(sys.executable).parent / "modconv-export"
DECODER_CONFIG = {"latent_dim": 16, "n_mlp": 2, "channels": [8, 8], "output_nc": 3}
ERROR = "modconv-export: error: "


def run_cli(*args, cwd=None, script: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "modconv_export"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def error_line(stderr: str) -> str:
    """The one and only stderr line of a failed run (no traceback, no exporter noise)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    assert lines[0].startswith(ERROR), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.endswith("bias") else 1.0))
    return model.eval()


def ort_run(path: Path, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


# -- shared inputs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def foreign(work):
    """The user's own layer modules, importable top-level as in their project; pickles made from them."""
    sys.path.insert(0, str(FOREIGN_LAYERS))
    try:
        import thirdparty_gan
        import tricky_models
    finally:
        sys.path.remove(str(FOREIGN_LAYERS))
    toy = thirdparty_gan.randomized(thirdparty_gan.ToyGenerator())
    torch.save(toy, work / "toy.pt")
    near = thirdparty_gan.randomized(thirdparty_gan.ToyGenerator())
    near.up.padding = nn.ConstantPad2d(1, 0.5)  # a non-zero constant pad: the modulated-conv rule declines
    torch.save(near, work / "near_miss.pt")
    for kind in ("svd", "sign", "batch", "fixed", "additive"):
        torch.save(tricky_models.head(kind), work / f"{kind}.pt")
    return {"toy": toy, "thirdparty_gan": thirdparty_gan}


@pytest.fixture(scope="module")
def decoder(work):
    model = randomized(get_family("decoder").build(DECODER_CONFIG), seed=1)
    save_checkpoint(work / "decoder.pt", "decoder", DECODER_CONFIG, model.state_dict())
    torch.save(model.state_dict(), work / "decoder_sd.pt")
    return model


@pytest.fixture(scope="module")
def good_onnx(work) -> bytes:
    """A real, valid ONNX file's bytes: what an earlier good run left at out.onnx."""
    torch.manual_seed(0)
    export_onnx(nn.Linear(4, 4).eval(), torch.randn(1, 4), work / "good.onnx", exporter="torchscript")
    return (work / "good.onnx").read_bytes()


# -- successful runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_run(work, decoder):
    out = work / "ckpt"
    out.mkdir()
    proc = run_cli(work / "decoder.pt", out / "g.onnx", "--torchscript", out / "g.ts", "--report", out / "g.json", "-v", script=True)
    return proc, out


def test_checkpoint_export_with_the_console_script(checkpoint_run, decoder):
    proc, out = checkpoint_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stderr  # -v: stderr carries progress lines only
    assert re.search(r"^modconv-export: \[\s*\d+\.\d s\] exporting ", proc.stderr, re.M)
    # the stages' own steps, each with the time since the command started, in the order they run
    steps = [re.sub(r"^modconv-export: \[\s*\d+\.\d s\] ", "", line) for line in proc.stderr.splitlines()]
    assert len(steps) == len(proc.stderr.splitlines()) and all(not s.startswith("modconv-export:") for s in steps)
    expected = ["rewrite: module rules", "rewrite: capturing the graph (torch.export)", "export: translating to ONNX (dynamo exporter, opset 18)",
                "export: checking the graph (onnx.checker, strict shape inference)", "export: writing the file",
                "verify: eager-original-cpu at batch 3", "verify: ort-cpu at batch 1", "verify: ort-cpu at batch 3"]  # fmt: skip
    assert [s for s in steps if s in expected] == expected, steps
    _, report = rewrite_model(decoder)
    counts = report.counts()
    line = f"rewrote {report.count()} modules (equal_lr: {counts['equal_lr']}, blur: {counts['blur']}, modulated_conv: {counts['modulated_conv']})"
    assert line in proc.stdout
    for path, rule in ((done.path, done.rule) for done in report.rewritten):  # -v lists every rewritten module
        assert f"  {path} -> {rule}\n" in proc.stdout
    assert re.search(r"exported .*g\.onnx \(dynamo exporter, opset 18, fp32, dynamic batch\) in \d+\.\d s", proc.stdout)
    assert "traced graph: no batch-grouped convolution left to rewrite (the module rules rewrote every layer)" in proc.stdout
    assert re.search(r"PASSED +\| ort-cpu +\| b=3 +\| image", proc.stdout)
    assert re.search(r"parity +PASSED", proc.stdout)
    sizes = re.findall(r"\d+(?:\.\d)? (?:B|KiB|MiB|KB|MB)\b", proc.stdout)  # each file's size once, in binary units, as on disk
    assert sizes == [format_bytes((out / "g.onnx").stat().st_size), format_bytes((out / "g.ts").stat().st_size)]
    if not torch.cuda.is_available():  # the default set skips CUDA here, saying so once
        assert proc.stdout.count("cuda: not available here, not run\n") == 1
        assert "NOT RUN" not in proc.stdout and "eager-original-cuda" not in proc.stdout


def test_checkpoint_export_files_match_eager_at_another_batch(checkpoint_run, decoder):
    proc, out = checkpoint_run
    assert proc.returncode == 0, proc.stderr
    proto = onnx.load(out / "g.onnx")
    assert [i.name for i in proto.graph.input] == ["latent"] and [o.name for o in proto.graph.output] == ["image"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    latent = torch.randn(5, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = decoder(latent)
    assert relative_l2(ort_run(out / "g.onnx", {"latent": latent})[0], expected) < 1e-4
    with torch.no_grad():
        assert relative_l2(torch.jit.load(str(out / "g.ts"))(latent), expected) < 1e-4


def test_checkpoint_export_report(checkpoint_run, work):
    proc, out = checkpoint_run
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "g.json").read_text())
    assert report["schema_version"] == 1 and report["tool"] == "modconv-export"
    created = datetime.datetime.fromisoformat(report["created"])
    assert created.tzinfo is not None and abs(datetime.datetime.now(datetime.UTC) - created).total_seconds() < 3600
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (work / "decoder.pt", out / "g.onnx", out / "g.ts")}
    assert report["model"]["sha256"] == digest[work / "decoder.pt"]  # the file it judged, as it is on disk
    assert report["export"]["onnx_sha256"] == digest[out / "g.onnx"] and report["export"]["torchscript_sha256"] == digest[out / "g.ts"]
    assert report["model"]["kind"] == "checkpoint" and report["model"]["family"] == "decoder"
    assert report["model"]["config"] == DECODER_CONFIG
    assert report["inputs"] == {"latent": [1, 16]}
    assert report["export"]["exporter"] == "dynamo" and report["export"]["torchscript"].endswith("g.ts")
    assert len(report["rewrite"]["rewritten"]) == 17
    assert report["parity"]["passed"] is True
    ran = {r["backend"] for r in report["parity"]["rows"] if r["status"] == "pass"}
    assert {"ort-cpu", "torchscript-cpu"} <= ran


@pytest.fixture(scope="module")
def foreign_run(work, foreign):
    out = work / "foreign"
    out.mkdir()
    args = [work / "toy.pt", out / "toy.onnx", "--trust-pickle", "--import-path", FOREIGN_LAYERS, "--input", "image=1x3x8x8",
            "--input", "latent=1x16", "--exporter", "legacy", "--report-image", out / "toy.png"]  # fmt: skip
    return run_cli(*args, cwd=out), out  # cwd is not the fixture directory: --import-path does it


def test_pickled_generator_with_layers_from_a_module_the_toolkit_never_saw(foreign_run, foreign):
    proc, out = foreign_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # not a terminal and no -v: nothing but errors on stderr
    _, report = rewrite_model(foreign["toy"])
    counts = report.counts()
    assert counts == {"modulated_conv": 4, "blur": 4, "equal_lr": 4}
    assert "rewrote 12 modules (equal_lr: 4, blur: 4, modulated_conv: 4)" in proc.stdout
    assert "pickled module (ToyGenerator" in proc.stdout
    # no --torchscript: the parity table still covers TorchScript, through an in-memory trace
    assert re.search(r"PASSED +\| torchscript-cpu +\| b=3 +\| output", proc.stdout) and "no TorchScript file given" not in proc.stdout
    gen = torch.Generator().manual_seed(4)
    image, latent = torch.randn(3, 3, 8, 8, generator=gen), torch.randn(3, 16, generator=gen)
    with torch.no_grad():
        expected = foreign["toy"](image, latent)
    assert relative_l2(ort_run(out / "toy.onnx", {"image": image, "latent": latent})[0], expected) < 1e-4
    png = (out / "toy.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_bare_state_dict_with_python_m_and_no_verify(work, decoder):
    out = work / "sd"
    out.mkdir()
    proc = run_cli(work / "decoder_sd.pt", out / "g.onnx", "--exporter", "legacy", "--no-verify", "--report", out / "g.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "state_dict (StyledImageDecoder, family 'decoder'" in proc.stdout
    assert "not verified (--no-verify)" in proc.stdout and "parity fp32" not in proc.stdout
    report = json.loads((out / "g.json").read_text())
    assert report["parity"] is None and report["model"]["kind"] == "state_dict"
    latent = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_l2(ort_run(out / "g.onnx", {"latent": latent})[0], decoder(latent)) < 1e-4


def test_fp16_export_is_verified_at_the_fp16_tolerance(work, decoder):
    out = work / "half"
    out.mkdir()
    proc = run_cli(
        work / "decoder.pt",
        out / "g.onnx",
        "--exporter",
        "legacy",
        "--precision",
        "fp16",
        "--providers",
        "cpu",
        "--report",
        out / "g.json",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "g.json").read_text())
    assert report["export"]["precision"] == "fp16"
    ort_rows = [r for r in report["parity"]["rows"] if r["backend"] == "ort-cpu"]
    assert ort_rows and all(r["status"] == "pass" and 1e-5 < r["rel_l2"] <= 1e-2 for r in ort_rows)
    latent = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative_l2(ort_run(out / "g.onnx", {"latent": latent})[0], decoder(latent)) < 1e-2


@pytest.mark.skipif(bool(bf16_unavailable_reason()), reason="no OpenVINO with native bf16 here")
def test_openvino_providers_verify_f32_and_bf16(work, decoder):
    out = work / "openvino"
    out.mkdir()
    proc = run_cli(
        work / "decoder.pt",
        out / "g.onnx",
        "--exporter",
        "legacy",
        "--providers",
        "cpu,openvino,openvino-bf16",
        "--report",
        out / "g.json",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((out / "g.json").read_text())["parity"]["rows"]
    f32 = [r for r in rows if r["backend"] == "openvino-cpu"]
    bf16 = [r for r in rows if r["backend"] == "openvino-cpu-bf16"]
    assert len(f32) == 2 and all(r["status"] == "pass" and r["rel_l2"] < 1e-5 for r in f32)
    assert len(bf16) == 2 and all(
        r["status"] == "pass" and r["precision"] == "bf16" and 1e-4 < r["rel_l2"] <= r["rel_l2_limit"] for r in bf16
    )
    assert "openvino-cpu-bf16" in proc.stdout and "PSNR" in proc.stdout


def test_parity_failure_keeps_the_file_and_exits_1(work, decoder, good_onnx):
    """An exact export judged against an impossible limit: the rows fail, the file is kept and says so."""
    out = work / "parity"
    out.mkdir()
    (out / "gate.onnx").write_bytes(good_onnx)
    proc = run_cli(work / "decoder.pt", out / "gate.onnx", "--max-rel-l2", "1e-30", "--report", out / "gate.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "parity check FAILED" in lines[0] and "gate.onnx kept" in lines[0]
    assert re.search(r"FAILED +\| ort-cpu +\| b=3 +\| image +\| rel-L2 \d\.\de-0\d > 1e-30", proc.stdout)
    assert (out / "gate.onnx").read_bytes() != good_onnx  # the new export replaced it and is kept
    onnx.checker.check_model(onnx.load(out / "gate.onnx"))
    assert json.loads((out / "gate.json").read_text())["parity"]["passed"] is False
    recorded = json.loads(read_properties(out / "gate.onnx")["modconv_export.parity"])  # the file says so too
    assert recorded["verified"] is True and recorded["passed"] is False


def test_program_that_depends_on_the_batch_size_is_refused(work, foreign, good_onnx):
    """A branch on the batch size: either exporter would freeze the traced batch's branch, so nothing is written."""
    out = work / "gate"
    out.mkdir()
    (out / "gate.onnx").write_bytes(good_onnx)
    for exporter in ("legacy", "dynamo"):
        proc = run_cli(work / "batch.pt", out / "gate.onnx", "--trust-pickle", "--import-path", FOREIGN_LAYERS, "--input", "x=1x4",
                       "--exporter", exporter)  # fmt: skip
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "computes differently at batch sizes 2 and 3 (from " in error_line(proc.stderr)
        assert "its batch cannot be made dynamic" in error_line(proc.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["gate.onnx"] and (out / "gate.onnx").read_bytes() == good_onnx


def test_limits_and_debug_metadata_options(work, decoder):
    """--max-rel-l2 and --rtol/--atol reach every row (table and JSON); --keep-debug-metadata keeps the traces."""
    out = work / "limits"
    out.mkdir()
    proc = run_cli(work / "decoder.pt", out / "g.onnx", "--keep-debug-metadata", "--max-rel-l2", "1e-3", "--rtol", "1e-2", "--atol", "1e-3",
                   "--providers", "cpu", "--batch-sizes", "2", "--report", out / "g.json")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((out / "g.json").read_text())["parity"]["rows"]
    assert {r["backend"] for r in rows} == {"eager-cpu", "torchscript-cpu", "ort-cpu"} and {r["batch"] for r in rows} == {2}
    assert all((r["rel_l2_limit"], r["rtol_limit"], r["atol_limit"], r["outside_band"]) == (1e-3, 1e-2, 1e-3, 0) for r in rows)
    assert re.search(
        r"PASSED +\| ort-cpu +\| b=2 +\| image +\| rel-L2 \S+ ≤ 1e-03, 0/\d+ elements outside atol 1e-03 \+ rtol 1e-02·\|ref\|", proc.stdout
    )
    data = (out / "g.onnx").read_bytes()
    assert b"pkg.torch.onnx.stack_trace" in data and str(Path(modconv_export.__file__).parent).encode() in data
    assert json.loads(read_properties(out / "g.onnx")["modconv_export.parity"])["passed"] is True


# -- exports that fail inside the exporter -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind, exporter, pattern",
    [
        ("svd", "legacy", r"legacy export failed in module 'body\.1' \(SingularValues\): .*aten::linalg_svdvals"),
        (
            "sign",
            "legacy",
            r"graph capture \(torch\.export\) failed in module 'body\.1' \(SignGate\) at tricky_models\.py:\d+ `if x\.mean\(\) > 0:`: data-dependent",
        ),
    ],
)
def test_unexportable_module_is_named_with_its_op(work, foreign, good_onnx, kind, exporter, pattern):
    out = work / f"unexportable-{kind}"
    out.mkdir()
    (out / "m.onnx").write_bytes(good_onnx)
    proc = run_cli(work / f"{kind}.pt", out / "m.onnx", "--trust-pickle", "--import-path", FOREIGN_LAYERS, "--input", "x=1x4",
                   "--exporter", exporter)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(pattern, error_line(proc.stderr))
    assert (out / "m.onnx").read_bytes() == good_onnx
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"]


def test_dynamo_op_without_conversion_is_traced_back_to_its_module(work, foreign, capfd, monkeypatch):
    """No user frame on the stack here (it fails converting the graph): an eager op trace names the module."""
    monkeypatch.syspath_prepend(str(FOREIGN_LAYERS))
    out = work / "svd-dynamo.onnx"
    assert main([str(work / "svd.pt"), str(out), "--trust-pickle", "--import-path", str(FOREIGN_LAYERS), "--input", "x=1x4"]) == 2
    line = error_line(capfd.readouterr().err)
    assert "dynamo export failed in module 'body.1' (SingularValues): op aten::_linalg_svd: it has no ONNX conversion" in line
    assert not out.exists()


def test_interrupted_export_leaves_no_output(work, decoder, good_onnx):
    out = work / "interrupt"
    out.mkdir()
    (out / "g.onnx").write_bytes(good_onnx)
    proc = subprocess.Popen([sys.executable, "-m", "modconv_export", work / "decoder.pt", out / "g.onnx", "--no-verify"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:  # the dynamo export (seconds) starts right after the rewrite line
        if line.startswith("rewrote"):
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr  # 128 + SIGTERM
    assert "interrupted by SIGTERM (nothing written; existing files are untouched)" in error_line(stderr)
    assert (out / "g.onnx").read_bytes() == good_onnx
    assert sorted(p.name for p in out.iterdir()) == ["g.onnx"]


# -- bad input: one line, exit 2, nothing written, an existing good file untouched --------------------


@pytest.fixture(scope="module")
def bad_inputs(work, decoder, foreign):
    d = work / "bad"
    d.mkdir()
    raw = (work / "decoder.pt").read_bytes()
    (d / "notes.txt").write_text("not a model\n")
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    corrupt = bytearray(raw)
    with zipfile.ZipFile(work / "decoder.pt") as zf:  # flip a byte inside the largest tensor's data (not in padding)
        info = max(zf.infolist(), key=lambda i: i.file_size)
    corrupt[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0xFF
    (d / "corrupt.pt").write_bytes(bytes(corrupt))
    torch.save({"conv.weight": torch.zeros(2, 2)}, d / "unknown.pt")
    state = decoder.state_dict()
    save_checkpoint(d / "mismatch.pt", "decoder", dict(DECODER_CONFIG, channels=[8, 4]), state)
    state = {k: v.clone() for k, v in state.items()}
    state["to_rgb.bias"][0, 1] = float("nan")
    torch.save(state, d / "nan.pt")
    (d / "model.onnx").write_bytes(raw)
    marker = d / "PWNED"
    evil = {"weight": torch.zeros(1), "x": _Touch(marker)}
    torch.save(evil, d / "evil.pt")
    return d, marker


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _unwritable_dir(base: Path) -> Path:
    d = base / "readonly"
    d.mkdir(exist_ok=True)
    d.chmod(0o555)
    try:
        (d / "probe").touch()
    except OSError:
        return d
    (d / "probe").unlink()  # root ignores permission bits; sysfs refuses new files to everyone
    if Path("/sys").is_dir():
        try:
            (Path("/sys") / "probe").touch()
        except OSError:
            return Path("/sys")
    pytest.skip("no unwritable directory available here")


BAD = "bad/"  # MODEL paths below are relative to the work directory
CASES = {
    "missing file": (["bad/absent.pt"], r"absent\.pt: no such file"),
    "text file": (["bad/notes.txt"], r"notes\.txt: is a text file"),
    "truncated file": (["bad/truncated.pt"], r"truncated\.pt: is truncated or corrupt"),
    "corrupt file": (["bad/corrupt.pt"], r"corrupt\.pt: is corrupt \(checksum mismatch"),
    "pickle without trust": (["toy.pt"], r"needs the Python global thirdparty_gan\.ToyGenerator.*--trust-pickle"),
    "malicious pickle": (["bad/evil.pt"], r"posix\.system.*would run code"),
    "malicious pickle, trusted": (["bad/evil.pt", "--trust-pickle"], r"refused even with --trust-pickle: it needs globals outside the allowlist: posix\.system"),
    "unknown family": (["bad/unknown.pt"], r"matches no known model family; looked for: .*decoder \(keys like"),
    "strict mismatch": (["bad/mismatch.pt"], r"does not fit family 'decoder' \(shape mismatches: blocks\.1\.conv0\.weight \(file \[8, 8, 3, 3\], model \[4, 8, 3, 3\]\)"),
    "nan weights": (["bad/nan.pt"], r"weights contain NaN/Inf: to_rgb\.bias \(1 NaN\)"),
    "out dir is a file": (["decoder.pt", "OUT=bad/notes.txt/g.onnx"], r"OUT .*notes\.txt/g\.onnx: output directory is not a directory"),
    "out dir unwritable": (["decoder.pt", "OUT=READONLY"], r"output directory is not writable"),
    "torchscript dir is a file": (["decoder.pt", "--torchscript", "bad/notes.txt/g.ts"], r"--torchscript bad/notes\.txt/g\.ts: output directory is not a directory"),
    "malformed input": (["decoder.pt", "--input", "latent=1,16"], r"malformed --input 'latent=1,16': expected NAME=SHAPE"),
    "unknown input name": (["decoder.pt", "--input", "z=1x16"], r"--input z: this model's inputs are latent"),
    "duplicate input": (["decoder.pt", "--input", "latent=1x16", "--input", "latent=2x16"], r"--input latent is given more than once"),
    "rejected shape": (["decoder.pt", "--input", "latent=1x17"], r"the model rejects the inputs latent=1x17: RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    "pickle without shapes": (["toy.pt", "--trust-pickle", "--import-path", str(FOREIGN_LAYERS)], r"its forward\(image, latent\) takes --input image=SHAPE --input latent=SHAPE"),
    "inputs out of order": (["toy.pt", "--trust-pickle", "--import-path", str(FOREIGN_LAYERS), "--input", "latent=1x16", "--input", "image=1x3x8x8"], r"--input names must follow forward\(image, latent\) in order"),
    "bad opset": (["decoder.pt", "--opset", "99"], r"opset 99 is not supported here: use 13\.\.\d+"),
    "out is not onnx": (["decoder.pt", "OUT=bad/g.pt"], r"OUT must be an \.onnx file"),
    "out is the model": (["bad/model.onnx", "OUT=bad/model.onnx"], r"OUT .*model\.onnx is the same file as MODEL"),
    "unknown option": (["decoder.pt", "--bogus"], r"unrecognized arguments: --bogus"),
    "missing out": (["decoder.pt", "OUT="], r"the following arguments are required: OUT\.onnx"),
    "bad exporter": (["decoder.pt", "--exporter", "tf"], r"invalid choice: 'tf'"),
    "bad providers": (["decoder.pt", "--providers", "tpu"], r"--providers takes cpu, cuda, CPUExecutionProvider, CUDAExecutionProvider, openvino, openvino-bf16 or OpenVINOExecutionProvider, comma-separated, got 'tpu'"),
    "bad repeated providers": (["decoder.pt", "--providers", "cpu", "--providers", "tpu"], r"--providers takes .* got 'cpu,tpu'"),
    "other ORT provider": (["decoder.pt", "--providers", "TensorrtExecutionProvider"], r"--providers takes cpu, cuda"),
    "bad batch sizes": (["decoder.pt", "--batch-sizes", "1,0"], r"--batch-sizes takes positive integers, comma-separated \(e\.g\. 1,3,8\), got '1,0'"),
    "batch sizes not numbers": (["decoder.pt", "--batch-sizes", "1;3"], r"--batch-sizes takes positive integers"),
    "verbose and quiet": (["decoder.pt", "-v", "-q"], r"argument -q/--quiet: not allowed with argument -v/--verbose"),
    "inputs without verify": (["decoder.pt", "--no-verify", "--save-inputs", "bad/i.json"], r"--save-inputs needs the parity check"),
    "outputs without verify": (["decoder.pt", "--no-verify", "--save-outputs", "bad/o.json"], r"--save-outputs needs the parity check"),
    "outputs dir is a file": (["decoder.pt", "--save-outputs", "bad/notes.txt/o.json"], r"--save-outputs bad/notes\.txt/o\.json: output directory is not a directory"),
    "triton repo is a file": (["decoder.pt", "--triton-repo", "bad/notes.txt"], r"--triton-repo bad/notes\.txt: is not a directory"),
    "onnx as the model": (["good.onnx"], r"good\.onnx: is an ONNX model, not a PyTorch file: give the checkpoint it was exported from"),
    "triton batch size": (["decoder.pt", "--triton-repo", "bad/repo", "--triton-max-batch-size", "0"], r"Triton max_batch_size must be at least 1, got 0"),
    "image without verify": (["decoder.pt", "--no-verify", "--report-image", "bad/x.png"], r"--report-image needs the parity check"),
    "truncation of a non-generator": (["decoder.pt", "--truncation", "0.7"], r"--truncation 0\.7 apply to generator files .*; this file is a modconv-export checkpoint of family 'decoder'$"),
    "network of a non-generator": (["decoder.pt", "--network", "g", "--latent", "w"], r"--network g --latent w apply to generator files"),
    "bad truncation": (["decoder.pt", "--truncation", "strong"], r"--truncation takes a finite number \(psi\) or 'input', got 'strong'"),
    "bad latent": (["decoder.pt", "--latent", "s"], r"argument --latent: invalid choice: 's'"),
    "image of a non-image": (["svd.pt", "--trust-pickle", "--import-path", str(FOREIGN_LAYERS), "--input", "x=1x4", "--report-image", "bad/x.png"], r"no image-like output"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("existing", [True, False], ids=["existing-out", "no-out"])
def test_bad_input_is_one_line_and_exit_2(case, existing, work, bad_inputs, good_onnx, capfd, monkeypatch):
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(FOREIGN_LAYERS))  # trusted pickles' classes (the CLI's --import-path does this)
    args, pattern = CASES[case]
    out = work / "bad-out" / f"{case.replace(' ', '-')}-{existing}"
    out.mkdir(parents=True)
    target = out / "g.onnx"
    if existing:
        target.write_bytes(good_onnx)
    model, *options = args
    given_out = next((o[4:] for o in options if o.startswith("OUT=")), None)
    options = [o for o in options if not o.startswith("OUT=")]
    if given_out == "READONLY":
        given_out = str(_unwritable_dir(work) / "g.onnx")
    argv = [model, *([given_out] if given_out else [] if given_out == "" else [str(target)]), *options]
    before = (work / model).read_bytes() if (work / model).is_file() else None
    code = main(argv)
    captured = capfd.readouterr()
    assert code == 2, captured.out + captured.err
    assert re.search(pattern, error_line(captured.err)), captured.err
    assert sorted(p.name for p in out.iterdir()) == (["g.onnx"] if existing else [])
    if existing:
        assert target.read_bytes() == good_onnx
    if before is not None:
        assert (work / model).read_bytes() == before
    assert not (bad_inputs[1]).exists()  # the malicious pickle's payload never ran


def test_report_image_without_pillow_is_one_line(work, decoder, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert main([str(work / "decoder.pt"), str(work / "nopil.onnx"), "--report-image", str(work / "x.png")]) == 2
    assert "needs Pillow: pip install 'modconv-export[image]'" in error_line(capfd.readouterr().err)
    assert not (work / "nopil.onnx").exists()


def test_verbose_lists_near_misses_and_the_graph_rewrite_takes_them(work, foreign, capfd, monkeypatch):
    """A module rule declines a non-zero constant pad; the traced graph still proves that conv factorisable."""
    monkeypatch.syspath_prepend(str(FOREIGN_LAYERS))
    argv = [str(work / "near_miss.pt"), str(work / "near.onnx"), "--trust-pickle", "--import-path", str(FOREIGN_LAYERS), "--input", "image=1x3x8x8",
            "--input", "latent=1x16", "--exporter", "legacy", "-v"]  # fmt: skip
    code = main(argv)
    captured = capfd.readouterr()
    assert code == 0, captured.out + captured.err
    assert "rewrote 11 modules (equal_lr: 4, blur: 4, modulated_conv: 3)" in captured.out
    assert (
        "  near miss: up: looks like modulated_conv but its padding (ConstantPad2d) is not reflect/replicate/zero padding" in captured.out
    )
    assert "rewrote 1 batch-grouped convolution in the traced graph" in captured.out
    assert "  up -> graph:batch_grouped_conv" in captured.out
    assert "PASSED" in captured.out and "FAILED" not in captured.out
    onnx.checker.check_model(onnx.load(work / "near.onnx"))


def test_unfactorisable_batch_grouped_conv_names_the_module(work, foreign, good_onnx):
    out = work / "additive"
    out.mkdir()
    (out / "m.onnx").write_bytes(good_onnx)
    proc = run_cli(work / "additive.pt", out / "m.onnx", "--trust-pickle", "--import-path", FOREIGN_LAYERS, "--input", "x=1x4")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = error_line(proc.stderr)
    assert "body.1: a convolution grouped by the batch cannot be made batch-independent: its factor" in line
    assert "does not scale input or output channels" in line
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"] and (out / "m.onnx").read_bytes() == good_onnx


def test_model_that_runs_at_one_batch_size_only_is_refused(work, foreign, capfd, monkeypatch):
    monkeypatch.syspath_prepend(str(FOREIGN_LAYERS))
    out = work / "fixed.onnx"
    code = main(
        [
            str(work / "fixed.pt"),
            str(out),
            "--trust-pickle",
            "--import-path",
            str(FOREIGN_LAYERS),
            "--input",
            "x=2x4",
            "--exporter",
            "legacy",
        ]
    )
    line = error_line(capfd.readouterr().err)
    assert code == 2
    assert "the model does not run at batch size 3, so its batch cannot be made dynamic: RuntimeError: shape '[2, 4]' is invalid" in line
    assert not out.exists()


def test_debug_shows_the_traceback(work, capfd):
    assert main([str(work / "absent.pt"), str(work / "absent.onnx"), "--debug"]) == 2
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and "LoadError" in err
    assert err.strip().splitlines()[-1] == f"{ERROR}{work / 'absent.pt'}: no such file"


# -- the same mistakes, as a user's shell sees them ---------------------------------------------------


@pytest.mark.parametrize(
    "case, script",
    [("missing file", True), ("malicious pickle", False), ("malicious pickle, trusted", True), ("pickle without trust", False),
     ("out dir is a file", False), ("onnx as the model", True), ("malformed input", True)],
)  # fmt: skip
def test_bad_input_in_a_subprocess(case, script, work, bad_inputs, good_onnx):
    args, pattern = CASES[case]
    out = work / "bad-sub" / case.replace(" ", "-").replace(",", "")
    out.mkdir(parents=True)
    (out / "g.onnx").write_bytes(good_onnx)
    model, *options = args
    given_out = next((o[4:] for o in options if o.startswith("OUT=")), None)
    options = [o for o in options if not o.startswith("OUT=")]
    proc = run_cli(model, given_out or out / "g.onnx", *options, cwd=work, script=script)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(pattern, error_line(proc.stderr))
    assert (out / "g.onnx").read_bytes() == good_onnx and sorted(p.name for p in out.iterdir()) == ["g.onnx"]
    assert not bad_inputs[1].exists()


@pytest.mark.parametrize(
    "text", ["latent", "latent=", "=1x16", "latent=1x", "latent=1x0", "latent=1,16", "latent=1x16x", "la tent=1x2", "latent=-1x2"]
)
def test_parse_input_is_strict(text):
    with pytest.raises(UsageError, match="malformed --input"):
        parse_input(text)


def test_parse_input_accepts_names_and_shapes():
    assert parse_input("latent=1x256") == ("latent", (1, 256))
    assert parse_input("image_0=2x3x64x64") == ("image_0", (2, 3, 64, 64))


def test_version_and_help(capfd):
    from importlib.metadata import packages_distributions, version

    from modconv_export import __version__
    from modconv_export.families import registered_families

    assert main(["--version"]) == 0
    lines = capfd.readouterr().out.strip().splitlines()
    assert lines[0] == f"modconv-export {__version__}"
    dist = packages_distributions()["onnxruntime"][0]  # onnxruntime-gpu here
    assert lines[1] == f"onnxruntime: {dist} {version(dist)}, providers: {', '.join(ort.get_available_providers())}"
    assert main(["--help"]) == 0
    text = capfd.readouterr().out
    for option in ("--input NAME=SHAPE", "--torchscript", "--exporter", "--opset", "--report", "--no-verify", "--trust-pickle",
                   "--import-path", "--debug", "--version", "exit status", "--keep-debug-metadata", "--save-inputs", "--save-outputs",
                   "--triton-repo", "--batch-sizes", "--max-rel-l2", "--rtol", "--atol", "-q, --quiet"):  # fmt: skip
        assert option in text
    for family in registered_families():  # one line each, from the registry
        assert f"  {family.name:<10} {family.description}\n" in text
    lines = text.rstrip().splitlines()
    examples = lines[lines.index("examples:") + 1 :]
    assert len(examples) == 5 and all(line.startswith("  modconv-export ") for line in examples)
    assert "samples/out/lats_small.pt" in examples[0] and "--arch" in examples[-1]
    for option in ("--network", "--latent", "--truncation", "--arch FILE.py:CLASS", "--arch-kwargs JSON", "--state-dict-key KEY"):
        assert option in text


def test_help_catalogue_is_the_registry():
    """--help names the families from a catalogue that needs no torch; it must be the registry, in order."""
    from modconv_export.cli.catalogue import FAMILIES
    from modconv_export.families import registered_families

    assert FAMILIES == tuple((f.name, f.description) for f in registered_families())


def test_noise_choice_is_printed_and_reported(work):
    """A generator whose noise layers would draw random noise: the CLI says what the export does instead."""
    from fixtures.stylegan2.layers import TinyGenerator

    torch.manual_seed(0)
    torch.save(TinyGenerator("clean").eval(), work / "noisy.pt")
    out = work / "noisy"
    out.mkdir()
    proc = run_cli(work / "noisy.pt", out / "g.onnx", "--trust-pickle", "--import-path", TESTS, "--exporter", "legacy", "--no-verify",
                   "--input", "w=1x8", "--input", "noise0=1x1x4x4", "--input", "noise1=1x1x8x8", "--report", out / "g.json")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: style_conv_noise (2: conv1, conv_up)" in proc.stdout and "zero noise" in proc.stdout
    notes = json.loads((out / "g.json").read_text())["rewrite"]["notes"]
    assert sorted(n["path"] for n in notes) == ["conv1", "conv_up"] and all(n["rule"] == "style_conv_noise" for n in notes)
