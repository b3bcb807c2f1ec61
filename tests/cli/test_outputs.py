"""Outputs are one transaction, signals and full disks leave nothing partial, and odd paths and options are one line.

Each case checks the same promise: exit 2 (or 128 + signal), one line on stderr, every output either
absent or complete, no temporary left behind, and an existing file untouched unless the run succeeded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn

from modconv_export import export_onnx
from modconv_export._util import files as files_module
from modconv_export._util.files import Outputs
from modconv_export.cli import main

from cli_inputs import write_cli_inputs
from helpers import patch_file_writes

ERROR = "modconv-export: error: "
FAST = ["--exporter", "legacy", "--providers", "cpu"]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modconv-export: ") and "Traceback" not in stderr, stderr
    return lines[0]


def cli(*args, cwd=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modconv_export", *args], capture_output=True, cwd=cwd, timeout=timeout, **kw)


def leftovers(*dirs: Path) -> list[str]:
    return sorted(p.name for d in dirs for p in d.iterdir() if p.name.endswith((".partial", ".probe", ".old")))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return write_cli_inputs(tmp_path_factory.mktemp("outputs"))


@pytest.fixture
def out(tmp_path, work) -> Path:
    """An output directory whose four targets already hold older files."""
    (tmp_path / "g.onnx").write_bytes((work / "old.onnx").read_bytes())
    for name in ("g.ts", "g.json", "g.png"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    return tmp_path


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def all_outputs(out: Path) -> list[str]:
    return ["--torchscript", str(out / "g.ts"), "--report", str(out / "g.json"), "--report-image", str(out / "g.png")]


# -- the transaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["g.ts", "g.png", "g.onnx"])  # the fuzz suite fails the others at random
def test_a_full_disk_at_any_output_changes_nothing(failing, work, out, capfd, monkeypatch):
    """write_bytes is where every output reaches the disk: fail the one for ``failing`` with ENOSPC after half the data."""
    real = files_module.write_bytes

    def full_disk(path, data):
        if failing in Path(path).name:
            data = data if isinstance(data, bytes) else b"".join(data)  # an ONNX file comes a tensor at a time
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    patch_file_writes(monkeypatch, full_disk)
    before = snapshot(out)
    outputs = all_outputs(out) if failing == "g.png" else [*all_outputs(out)[:4], "--no-verify"]  # only the picture needs the check
    code = main([str(work / "dec.pt"), str(out / "g.onnx"), *outputs, *FAST])
    line = one_line(capfd.readouterr().err)
    assert code == 2 and "No space left on device" in line, line
    assert snapshot(out) == before  # nothing partial, nothing replaced (not even the outputs written before)


def test_hand_off_files_join_the_transaction(work, out, capfd, monkeypatch):
    """Polygraphy data and a Triton repository too: a write failing in the repository leaves no folder behind."""
    real = files_module.write_bytes

    def full_disk(path, data):
        if "config.pbtxt" in Path(path).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    patch_file_writes(monkeypatch, full_disk)
    (out / "in.json").write_text("old inputs")
    before = snapshot(out)
    argv = [str(work / "dec.pt"), str(out / "g.onnx"), "--save-inputs", str(out / "in.json"), "--save-outputs", str(out / "ref.json"),
            "--triton-repo", str(out / "repo"), *FAST]  # fmt: skip
    assert main(argv) == 2 and "No space left on device" in one_line(capfd.readouterr().err)
    assert snapshot(out) == before and not (out / "repo").exists()
    monkeypatch.undo()
    assert main(argv) == 0, capfd.readouterr().err
    assert (out / "repo" / "g" / "1" / "model.onnx").read_bytes() == (out / "g.onnx").read_bytes()
    assert json.loads((out / "in.json").read_text()) and leftovers(out, out / "repo" / "g", out / "repo" / "g" / "1") == []


def test_a_failing_torchscript_step_keeps_the_old_onnx(work, out, capfd, monkeypatch):
    from modconv_export.errors import ExportError

    def fail(*args, **kwargs):
        raise ExportError("torch.jit.trace failed: simulated")

    monkeypatch.setattr("modconv_export.cli.steps.export_torchscript", fail)
    before = snapshot(out)
    assert main([str(work / "dec.pt"), str(out / "g.onnx"), *all_outputs(out), *FAST]) == 2
    assert "simulated" in one_line(capfd.readouterr().err)
    assert snapshot(out) == before


def test_an_allocation_failure_anywhere_is_exit_2(work, out, capfd, monkeypatch):
    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr("modconv_export.cli.steps.export_torchscript", oom)
    before = snapshot(out)
    assert main([str(work / "dec.pt"), str(out / "g.onnx"), "--torchscript", str(out / "g.ts"), *FAST]) == 2
    assert re.search(r"out of memory: RuntimeError: .*can't allocate memory", one_line(capfd.readouterr().err))
    assert snapshot(out) == before


def test_success_replaces_all_outputs_together(work, out, capfd):
    assert main([str(work / "dec.pt"), str(out / "g.onnx"), *all_outputs(out), *FAST]) == 0, capfd.readouterr().err
    onnx.checker.check_model(onnx.load(out / "g.onnx"))
    assert json.loads((out / "g.json").read_text())["parity"]["files"]["onnx"] == str(out / "g.onnx")  # not a temporary
    assert (out / "g.png").read_bytes().startswith(b"\x89PNG") and (out / "g.ts").read_bytes().startswith(b"PK")
    assert leftovers(out) == []


def test_commit_rolls_back_when_a_rename_fails(tmp_path):
    (tmp_path / "a").write_text("old a")
    (tmp_path / "b").mkdir()  # renaming a file onto a directory fails
    outputs = Outputs()
    with pytest.raises(OSError), outputs:
        files_module.write_bytes(outputs.stage(tmp_path / "a"), b"new a")
        outputs._staged[tmp_path / "b"] = outputs.stage(tmp_path / "c")  # a target that cannot be replaced
        outputs.commit()
    assert (tmp_path / "a").read_text() == "old a" and not outputs.committed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


# -- real full disks -----------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str):
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(d: Path) -> None:
    with contextlib.suppress(OSError), open(d / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


@pytest.mark.parametrize("where", ["--report"])  # a full disk for --torchscript: the RLIMIT_FSIZE test below
def test_a_really_full_disk(where, work, out, tmp_path, capfd):
    with tiny_tmpfs(tmp_path / "full", "128k") as full:
        _fill(full)
        target = full / ("g.ts" if where == "--torchscript" else "g.json")
        before = snapshot(out)
        assert main([str(work / "dec.pt"), str(out / "g.onnx"), where, str(target), *FAST]) == 2
        assert "No space left on device" in one_line(capfd.readouterr().err)
        assert snapshot(out) == before and sorted(p.name for p in full.iterdir()) == ["filler"]


def test_a_file_size_limit_is_a_full_disk_too(work, out):
    """Without root: RLIMIT_FSIZE makes every write past 40 kB fail (EFBIG), as a full disk would."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    before = snapshot(out)
    proc = cli(work / "dec.pt", out / "g.onnx", "--torchscript", out / "g.ts", "--no-verify", *FAST, preexec_fn=limit, text=True)
    assert proc.returncode == 2 and "File too large" in one_line(proc.stderr), proc.stderr
    assert snapshot(out) == before


# -- signals -------------------------------------------------------------------------------------------


#: step -> what to wrap so that the signal arrives inside it
STEPS = {
    "ONNX export": "modconv_export.cli.steps.export_onnx",
    "TorchScript export": "modconv_export.cli.steps.export_torchscript",
    "parity check": "modconv_export.verify.check_parity",
    "JSON report": "modconv_export.cli.steps.write_bytes",
    "picture": "modconv_export.verify.write_report_image",
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_signal_in_any_step_leaves_the_old_files(step, work, out, capfd, monkeypatch):
    """The signal (each of the three in turn) is sent to this process from inside the step, after the step did its work."""
    sig = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)[list(STEPS).index(step) % 3]
    target = STEPS[step]
    module, _, name = target.rpartition(".")
    real = getattr(sys.modules[module], name)

    def step_then_signal(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the handler raises here, inside the step
        raise AssertionError("the signal did not interrupt the step")

    monkeypatch.setattr(target, step_then_signal)
    before = snapshot(out)
    verified = step in ("parity check", "picture")
    code = main(
        [str(work / "dec.pt"), str(out / "g.onnx"), *(all_outputs(out) if verified else [*all_outputs(out)[:4], "--no-verify"]), *FAST]
    )
    line = one_line(capfd.readouterr().err)
    assert code == 128 + sig and f"interrupted by {signal.Signals(sig).name} (nothing written; existing files are untouched)" in line, line
    assert snapshot(out) == before


def test_a_signal_during_the_renames_waits_for_them(work, out, capfd, monkeypatch):
    real_commit, real_deferred = Outputs.commit, files_module.deferred

    @contextlib.contextmanager
    def deferred_with_signal():
        with real_deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # held back until every output is in place
            yield

    def commit(self):
        if len(self._staged) > 1:  # the run's own transaction (exports commit their single files into it first)
            monkeypatch.setattr(files_module, "deferred", deferred_with_signal)
        real_commit(self)

    monkeypatch.setattr(Outputs, "commit", commit)
    before = snapshot(out)
    assert main([str(work / "dec.pt"), str(out / "g.onnx"), *all_outputs(out), *FAST]) == 143
    assert "interrupted by SIGTERM after the outputs were written (they are complete)" in one_line(capfd.readouterr().err)
    after = snapshot(out)
    assert all(after[k] != before[k] for k in before) and leftovers(out) == []
    onnx.checker.check_model(onnx.load(out / "g.onnx"))
    json.loads(after["g.json"])


def test_sigint_while_verifying_as_a_user_sends_it(work, out):
    before = snapshot(out)
    proc = subprocess.Popen([sys.executable, "-m", "modconv_export", work / "dec.pt", out / "g.onnx", *all_outputs(out), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("wrote TorchScript"):  # verification (seconds) starts now
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted by SIGINT (nothing written; existing files are untouched)" in one_line(stderr)
    assert snapshot(out) == before


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_start_up_imports_is_one_line(sig, code, work, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "modconv_export", work / "dec.pt", tmp_path / "g.onnx"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # the interpreter is up (~30 ms), torch is still importing (seconds)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code and "interrupted by" in one_line(stderr), stderr
    assert list(tmp_path.iterdir()) == []


# -- names and options ---------------------------------------------------------------------------------


def test_long_and_non_utf8_file_names(work, tmp_path):
    """A legal 250-byte name leaves room for the temporary's; bytes that are not UTF-8 are kept and shown escaped."""
    odd = os.fsencode(tmp_path) + b"/d\xff\xfe"
    os.mkdir(odd)
    os.link(work / "dec.pt", odd + b"/m\xff.pt")
    onnx_name, ts_name = b"g\xff" * 81 + b".onnx", b"t" * 250
    proc = cli(odd + b"/m\xff.pt", odd + b"/" + onnx_name, "--torchscript", odd + b"/" + ts_name, "--report", odd + b"/r\xff.json", *FAST)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")
    assert b"g\\xffg\\xff" in proc.stdout  # shown escaped, not a UnicodeEncodeError
    report = json.loads(open(odd + b"/r\xff.json", "rb").read())
    assert os.fsencode(report["export"]["onnx"]) == odd + b"/" + onnx_name
    assert sorted(os.listdir(odd)) == sorted([b"m\xff.pt", onnx_name, ts_name, b"r\xff.json"])


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--rtol", "-1"], r"argument --rtol: must be a finite number > 0, got '-1'"),
        (["--rtol", "nan"], r"argument --rtol: must be a finite number > 0, got 'nan'"),
        (["--rtol", "inf"], r"argument --rtol: must be a finite number > 0, got 'inf'"),
        (["--atol", "0"], r"argument --atol: must be a finite number > 0, got '0'"),
        (["--atol", "x"], r"argument --atol: not a number: 'x'"),
        (["--input", "latent=3000000000x64"], r"the inputs latent=3000000000x64 \(at batch 3000000000, before any activation\) need 715\.3 GiB, but only .* available"),
        (["--input", "latent=1x100000000000"], r"need 1\.1 TiB"),
    ],
)  # fmt: skip
def test_options_that_cannot_work_are_refused_before_allocating(args, pattern, work, tmp_path, capfd):
    assert main([str(work / "dec.pt"), str(tmp_path / "g.onnx"), *args]) == 2
    assert re.search(pattern, one_line(capfd.readouterr().err))
    assert list(tmp_path.iterdir()) == []


def test_a_fifo_or_device_as_model_is_refused_at_once(tmp_path, capfd):
    os.mkfifo(tmp_path / "model.pt")
    start = time.perf_counter()
    assert main([str(tmp_path / "model.pt"), str(tmp_path / "g.onnx")]) == 2
    assert "model.pt: is a FIFO, not a model file" in one_line(capfd.readouterr().err)
    assert main(["/dev/zero", str(tmp_path / "g.onnx")]) == 2
    assert "/dev/zero: is a device, not a model file" in one_line(capfd.readouterr().err)
    assert time.perf_counter() - start < 5


def test_complex_weights_are_refused(work, tmp_path, capfd):
    state = torch.load(work / "dec.pt", weights_only=True)["state_dict"]
    torch.save({k: v.to(torch.complex64) for k, v in state.items()}, tmp_path / "complex.pt")
    assert main([str(tmp_path / "complex.pt"), str(tmp_path / "g.onnx")]) == 2
    assert "holds complex (non-real) tensors" in one_line(capfd.readouterr().err)


def test_the_dynamo_exporter_writes_the_opset_asked_for_or_refuses(tmp_path):
    """It exports at opset 18 and converts; a file at another opset than asked for is never written."""
    from modconv_export import ExportError
    from modconv_export.export import opset_of

    model = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    path = export_onnx(model, x, tmp_path / "up.onnx", opset=20, rewrite=False)
    assert opset_of(onnx.load(path)) == 20
    with pytest.raises(ExportError, match=r"the dynamo exporter wrote opset 18, not the requested 17, and converting it failed .*Pad"):
        export_onnx(model, x, tmp_path / "down.onnx", opset=17, rewrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.onnx"]
