"""``--arch FILE.py:CLASS`` / ``MODULE:CLASS`` + ``--arch-kwargs`` + ``--state-dict-key``: any codebase's weights in
the class the user names, checked against the file before anything is allocated, every mistake one line."""

from __future__ import annotations

import json
import sys

import onnxruntime as ort
import pytest
import torch

from modconv_export.cli import main
from modconv_export.errors import LoadError
from modconv_export.load import load_model

from helpers import FIXTURES, relative_l2

USER_CODE = FIXTURES / "user_code"
ARCH = f"{USER_CODE / 'arch_models.py'}:StyleNetExport"
ERROR = "modconv-export: error: "


@pytest.fixture(scope="module")
def arch_models():
    sys.path.insert(0, str(USER_CODE))
    try:
        import arch_models
    finally:
        sys.path.remove(str(USER_CODE))
    return arch_models


@pytest.fixture(scope="module")
def checkpoint(arch_models, tmp_path_factory):
    """A training checkpoint of another codebase: two networks and the script's options."""
    torch.manual_seed(0)
    g_ema, g = arch_models.StyleNet(size=8), arch_models.StyleNet(size=8)
    path = tmp_path_factory.mktemp("arch") / "ckpt.pt"
    torch.save({"g": g.state_dict(), "g_ema": g_ema.state_dict(), "iteration": 3}, path)
    return path, g_ema.eval(), g.eval()


def test_state_dict_loads_into_the_named_class(checkpoint):
    path, g_ema, g = checkpoint
    z = torch.randn(3, 16)
    with torch.no_grad():
        for key, reference in ((None, g_ema), ("g_ema", g_ema), ("g", g)):
            loaded = load_model(path, arch=ARCH, state_dict_key=key)
            assert loaded.kind == "arch" and loaded.family is None and type(loaded.module).__name__ == "StyleNetExport"
            assert torch.equal(loaded.module(z), reference(z)[0])
    module = load_model(path, arch="arch_models:StyleNetExport", import_paths=[USER_CODE]).module  # MODULE:CLASS
    assert torch.equal(module(z), g_ema(z)[0])


def test_cli_exports_with_arch(checkpoint, tmp_path, capfd):
    path, g_ema, _ = checkpoint
    out = tmp_path / "g.onnx"
    assert main([str(path), str(out), "--arch", ARCH, "--arch-kwargs", '{"size": 8}', "--input", "z=1x16", "--providers", "cpu"]) == 0
    stdout = capfd.readouterr().out
    assert "state_dict in --arch at 'g_ema' (StyleNetExport, 1,523 parameters)" in stdout and "PASSED: 6 rows passed" in stdout
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    (image,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"z": z.numpy()})
    with torch.no_grad():
        assert relative_l2(image, g_ema(z)[0]) <= 1e-5


def test_shapes_are_compared_before_anything_is_allocated(checkpoint):
    path, _, _ = checkpoint
    # 1 x 8 x 100000 x 100000 floats (320 GB) if it were built for real: refused from the meta build
    with pytest.raises(LoadError) as info:
        load_model(path, arch=ARCH, arch_kwargs={"size": 100000})
    assert str(info.value) == (
        f"{path}: does not fit --arch {ARCH} with these --arch-kwargs (shape mismatches: const (file [1, 8, 8, 8], model [1, 8, 100000, 100000]))"
    )


def _refusal(capfd, argv) -> str:
    assert main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(ERROR), err
    return err[0][len(ERROR) :]


@pytest.mark.parametrize(
    "options,message",
    [
        (["--arch-kwargs", "{size: 8}"], "--arch-kwargs is not JSON (Expecting property name enclosed in double quotes at character 1)"),
        (["--arch-kwargs", "[8]"], "--arch-kwargs must be a JSON object of keyword arguments"),
        (
            ["--arch-kwargs", '{"sizes": 8}'],
            "--arch-kwargs do not fit StyleNetExport(size: int = 8, style_dim: int = 16, channels: int = 8): got an unexpected keyword argument 'sizes'",
        ),
        (["--arch-kwargs", '{"channels": 4}'], "does not fit --arch"),
        (["--state-dict-key", "iteration"], "--state-dict-key iteration: holds an int, not a state_dict"),
        (["--latent", "w"], "--latent w apply to the generator families the toolkit builds; with --arch the class's forward decides"),
    ],
    ids=["not-json", "not-object", "wrong-name", "wrong-shape", "not-a-state-dict", "latent"],
)
def test_bad_arch_options_are_one_line(checkpoint, tmp_path, capfd, options, message):
    path, _, _ = checkpoint
    assert message in _refusal(capfd, [str(path), str(tmp_path / "x.onnx"), "--arch", ARCH, *options, "--input", "z=1x16"])
    assert not list(tmp_path.iterdir())


def test_bad_arch_files_are_one_line(checkpoint, tmp_path, capfd, monkeypatch):
    path, _, _ = checkpoint
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('this module builds CUDA code at import')\n")
    (tmp_path / "needs_op.py").write_text("from op_not_on_the_path import upfirdn2d\n")
    cases = {
        "broken.py:Net": "--arch broken.py:Net: importing broken.py failed: RuntimeError: this module builds CUDA code at import",
        "needs_op.py:Net": "importing needs_op.py failed: ModuleNotFoundError: No module named 'op_not_on_the_path' (--import-path DIR",
        f"{USER_CODE / 'arch_models.py'}:Nope": "defines no class Nope (its nn.Module classes: StyleNet, StyleNetExport)",
        "missing.py:Net": "--arch missing.py:Net: no such file missing.py",
        "arch_models.py": "--arch takes FILE.py:CLASS or MODULE:CLASS",
    }
    for arch, message in cases.items():
        assert message in _refusal(capfd, [str(path), "x.onnx", "--arch", arch, "--input", "z=1x16"]), arch
    assert "--arch-kwargs needs --arch" in _refusal(capfd, [str(path), "x.onnx", "--arch-kwargs", json.dumps({"size": 8})])
    assert not (tmp_path / "x.onnx").exists() and "broken" not in sys.modules


def test_a_forward_that_returns_more_than_tensors_names_the_wrapper(checkpoint, tmp_path, capfd):
    path, _, _ = checkpoint
    arch = f"{USER_CODE / 'arch_models.py'}:StyleNet"
    message = _refusal(capfd, [str(path), str(tmp_path / "x.onnx"), "--arch", arch, "--input", "z=1x16"])
    assert message.startswith("the model's forward returns (Tensor, NoneType), and an exported graph returns tensors only")
