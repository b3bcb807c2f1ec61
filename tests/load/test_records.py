"""A training script's ``argparse.Namespace`` is read as data without ``--trust-pickle``; anything else in its
place is refused in one line and nothing of the file runs."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from modconv_export.cli import main
from modconv_export.errors import LoadError
from modconv_export.families import get_family
from modconv_export.load import load_model
from modconv_export.load.pickled import load_weights_only
from modconv_export.load.records import ArgsRecord

MARKER = "modconv_records_marker"


@pytest.fixture(scope="module")
def state():
    family = get_family("rosinality")
    torch.manual_seed(0)
    return family.build(family.preset("small")).state_dict()


class _Namespace:
    """Pickles as ``argparse.Namespace`` made by ``reduce`` (arguments, state) of the test's choosing."""

    def __init__(self, args: tuple = (), state=None) -> None:
        self.args, self.state = args, state

    def __reduce__(self):
        return (argparse.Namespace, self.args, self.state)


class _System:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_namespace_is_data(state, tmp_path):
    inner = argparse.Namespace(depth=2)
    args = argparse.Namespace(size=32, lr=0.002, path="lmdb", ckpt=None, wandb=False, betas=(0.0, 0.99), inner=inner, names=["a"])
    torch.save({"g_ema": state, "args": args}, tmp_path / "train.pt")
    loaded = load_model(tmp_path / "train.pt")  # no trust needed
    assert loaded.family.name == "rosinality"
    with open(tmp_path / "train.pt", "rb") as f:
        obj, refusal = load_weights_only(f, tmp_path / "train.pt", "zip")
    assert refusal is None and isinstance(obj["args"], ArgsRecord)
    assert obj["args"].size == 32 and obj["args"].betas == (0.0, 0.99) and obj["args"].inner.depth == 2
    assert obj["args"].values["path"] == "lmdb" and not hasattr(obj["args"], "missing")


@pytest.mark.parametrize(
    "hostile,message",
    [
        (_Namespace(("x",)), "the file builds an argparse.Namespace with arguments of its own"),
        (_Namespace((), ({"a": 1}, {"b": 2})), "the file gives an argparse.Namespace a tuple state, not a dict of names"),
        (_Namespace((), {"not a name": 1}), "the file gives an argparse.Namespace a dict state, not a dict of names"),
        (_Namespace((), {"opt": torch.optim.SGD}), "needs the Python global torch.optim.sgd.SGD"),
        (_Namespace((), {"cmd": _System()}), "needs the Python global posix.system"),
    ],
    ids=["arguments", "slot-state", "odd-names", "class-value", "os-system"],
)
def test_hostile_args_are_refused_and_nothing_runs(state, tmp_path, capfd, monkeypatch, hostile, message):
    monkeypatch.chdir(tmp_path)
    torch.save({"g_ema": state, "args": hostile}, tmp_path / "train.pt")
    assert main([str(tmp_path / "train.pt"), str(tmp_path / "out.onnx")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / MARKER).exists() and not (tmp_path / "out.onnx").exists()
    with pytest.raises(LoadError):  # trust does not make a record anything but data
        load_model(tmp_path / "train.pt", trust_pickle=True)
    assert not (tmp_path / MARKER).exists()
