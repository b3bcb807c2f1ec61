"""What a new user meets first: fast answers to mistakes, backends that run or fail by name, plain names,
output folders made as needed, the version in one place (issue 23).

Usage errors, ``--help`` and ``--version`` are checked with ``python -X importtime``: torch must not be
among the imports (a control shows the check sees torch where it is imported).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib

import pytest
import torch

import modconv_export
from modconv_export import save_checkpoint
from modconv_export.cli import main
from modconv_export.families import get_family
from modconv_export.verify.providers import parse_providers, unavailable

from helpers import ROOT

DECODER_CONFIG = {"latent_dim": 16, "n_mlp": 2, "channels": [8, 8], "output_nc": 3}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("first_use")
    torch.manual_seed(0)
    save_checkpoint(d / "decoder.pt", "decoder", DECODER_CONFIG, get_family("decoder").build(DECODER_CONFIG).state_dict())
    (d / "notes.txt").write_text("not a model\n")
    (d / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x032.0" + bytes(64))  # how every ONNX file starts
    return d


def _imports(args: list[str], cwd) -> tuple[int, str, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modconv_export", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    lines = proc.stderr.splitlines()
    modules = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:") and "|" in line}
    rest = [line for line in lines if not line.startswith("import time:")]
    return proc.returncode, "\n".join(rest), modules


FAST_ANSWERS = {
    "--help": (["--help"], 0, ""),
    "--version": (["--version"], 0, ""),
    "missing model": (["missing.pt", "out/g.onnx"], 2, "missing.pt: no such file"),
    "text as model": (["notes.txt", "out/g.onnx"], 2, "notes.txt: is a text file"),
    "onnx as model": (["model.onnx", "out/g.onnx"], 2, "model.onnx: is an ONNX model, not a PyTorch file"),
    "malformed input": (["decoder.pt", "out/g.onnx", "--input", "latent=1,16"], 2, "malformed --input"),
    "unknown provider": (["decoder.pt", "out/g.onnx", "--providers", "tpu"], 2, "--providers takes cpu, cuda"),
    "unknown option": (["decoder.pt", "out/g.onnx", "--bogus"], 2, "unrecognized arguments: --bogus"),
    "out is not onnx": (["decoder.pt", "out/g.pt"], 2, "OUT must be an .onnx file"),
}


@pytest.mark.parametrize("case", list(FAST_ANSWERS))
def test_mistakes_help_and_version_import_no_torch(case, work):
    args, code, message = FAST_ANSWERS[case]
    returned, stderr, modules = _imports(args, work)
    assert returned == code, stderr
    assert message in stderr and len(stderr.strip().splitlines()) == (1 if code else 0)
    assert "torch" not in modules and not any(m.startswith("torch.") for m in modules), sorted(m for m in modules if "torch" in m)
    assert not (work / "out").exists()  # nothing made for a run that did not start


def test_the_import_check_sees_torch_where_it_is_imported(work):
    """Control: a file that passes the light checks goes on to torch (here to a bad --opset, found with torch's help)."""
    returned, stderr, modules = _imports(["decoder.pt", "g.onnx", "--opset", "99"], work)
    assert returned == 2 and "opset 99 is not supported here" in stderr
    assert "torch" in modules


@pytest.mark.parametrize(
    ("providers", "blocked", "message"),
    [
        (["cpu,openvino"], "openvino", r"openvino: OpenVINO not installed \(pip install 'modconv-export\[openvino\]'\)"),
        (["openvino", "cpu"], "openvino", r"openvino: OpenVINO not installed"),  # repeated options are merged, not the last kept
        (
            ["OpenVINOExecutionProvider"],
            "onnxruntime_ep_openvino",
            r"OpenVINOExecutionProvider: .* \(pip install 'modconv-export\[openvino-ep\]'\)",
        ),
        (["cpu", "CUDAExecutionProvider"], "cuda", r"cuda: torch \S+ sees no CUDA device"),
    ],
)
def test_a_named_backend_that_cannot_run_fails_before_the_slow_steps(providers, blocked, message, work, tmp_path, capfd, monkeypatch):
    if blocked == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    else:
        monkeypatch.setitem(sys.modules, blocked, None)  # the package is not installed
    argv = [str(work / "decoder.pt"), str(tmp_path / "new" / "g.onnx")] + [a for p in providers for a in ("--providers", p)]
    capfd.readouterr()
    assert main(argv) == 2
    out, err = capfd.readouterr()
    (line,) = err.strip().splitlines()
    assert line.startswith("modconv-export: error: --providers names what cannot run here: ") and re.search(message, line), line
    assert "loaded" not in out  # refused before the model was read
    assert not (tmp_path / "new").exists()  # and the folder made for OUT is gone again


def test_ort_execution_provider_names_select_their_runners():
    assert parse_providers("CPUExecutionProvider,CUDAExecutionProvider") == ("cpu", "cuda")
    assert parse_providers(["OpenVINOExecutionProvider", "openvino", "cpu,openvino"]) == ("ort-openvino", "openvino", "cpu")
    from modconv_export.layers.seed import ModulatedConv2d
    from modconv_export.verify import check_parity

    torch.manual_seed(0)
    model = ModulatedConv2d(3, 3, 3, latent_dim=4).eval()
    args = (torch.randn(1, 3, 8, 8), torch.randn(1, 4))
    report = check_parity(model, args, providers=("OpenVINOExecutionProvider",), batch_sizes=(2,))
    assert {r.backend for r in report.rows} == {"ort-openvino-cpu"}  # ONNX Runtime's OpenVINO EP, not the OpenVINO runtime
    assert all(r.status == "not run" for r in report.rows)  # no ONNX file given: the runner is planned, with its reason
    assert "no ONNX file given" in report.rows[0].reason


def test_legacy_exporter_new_folders_and_a_portable_triton_config(work, tmp_path, capfd):
    """``--exporter torchscript`` is read as ``legacy`` with a note; missing output folders (OUT, --report,
    --triton-repo) are made; the Triton config names an instance kind only when asked."""
    out = tmp_path / "a" / "b"
    argv = [str(work / "decoder.pt"), str(out / "g.onnx"), "--exporter", "torchscript", "--no-verify", "--report", str(tmp_path / "r" / "g.json"),
            "--triton-repo", str(tmp_path / "t" / "repo"), "--triton-instance-kind", "gpu"]  # fmt: skip
    capfd.readouterr()
    assert main(argv) == 0
    stdout = capfd.readouterr().out
    assert "note: --exporter torchscript is now called --exporter legacy" in stdout
    assert "exported " in stdout and "(legacy exporter, opset" in stdout
    report = json.loads((tmp_path / "r" / "g.json").read_text())
    assert report["export"]["exporter"] == "legacy" and (out / "g.onnx").is_file()
    config = (tmp_path / "t" / "repo" / "g" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in config
    assert stdout.count("KiB") == 1 and " KB" not in stdout  # one file size, in binary units


def test_a_failed_run_removes_the_folders_it_made(work, tmp_path, capfd):
    argv = [str(work / "decoder.pt"), str(tmp_path / "gone" / "deeper" / "g.onnx"), "--input", "latent=1x17", "--no-verify"]
    assert main(argv) == 2
    assert "the model rejects the inputs latent=1x17" in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_version_is_declared_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "modconv_export.__version__"}
    tree = ast.parse((ROOT / "modconv_export" / "__init__.py").read_text())  # setuptools reads it without importing
    (assigned,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and [t.id for t in n.targets] == ["__version__"]]
    assert assigned == modconv_export.__version__


def test_unavailable_says_nothing_for_the_cpu():
    assert unavailable("cpu") == ""
    with pytest.raises(ValueError):
        unavailable("tpu")
