"""NVlabs network pickles (``pickle.dump`` of persistence objects) are read as data and restored from the checkout.

CI has no NVlabs code: the pickles here come from ``tests/fixtures/nvlabs_format``, test code in NVlabs' checkout
layout with the same persistence protocol, written as NVlabs' training loop writes snapshots (the real checkouts
are in ``tests/cli/test_nvlabs_upstream.py``). Each hostile file is refused in one line with exit 2 and nothing
written, and its payload never runs inside the toolkit; a control then loads the same file with plain
``pickle.load`` (what NVlabs' own loader does) and must see the marker, which proves the payload live.
"""

from __future__ import annotations

import pickle
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from modconv_export import LoadError, load_model
from modconv_export.cli import main
from modconv_export.load import GeneratorOptions

import nvlabs_pickles as nv
from helpers import FIXTURES, relative_l2
from pickle_payloads import Call, G, StackGlobal, plain_pickle

USER_CODE = FIXTURES / "user_code"
ERROR = "modconv-export: error: "


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A conditional snapshot at every pickle protocol, and an unconditional one."""
    d = tmp_path_factory.mktemp("nvlabs")
    snap, plain = nv.snapshot(c_dim=3, seed=0), nv.snapshot(c_dim=0, seed=4)
    paths = {p: nv.write(d / f"snapshot-p{p}.pkl", snap, protocol=p) for p in (2, 3, 4, 5)}
    return {"snap": snap, "plain": plain, "plain_path": nv.write(d / "plain.pkl", plain), **paths}


def _args(batch: int, c_dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 16, generator=gen)
    return (z, torch.eye(c_dim)[torch.randint(c_dim, (batch,), generator=gen)]) if c_dim else (z,)


def _run(module: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(*args)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_protocol_restores_the_network_exactly(files, protocol):
    loaded = load_model(files[protocol], import_paths=[nv.FORMAT])
    args = _args(3, 3)
    assert torch.equal(_run(loaded.module, *args), nv.reference(files["snap"]["G_ema"], *args))
    assert loaded.kind == "nvlabs" and [s.name for s in loaded.inputs] == ["z", "c"] and loaded.family.outputs == ("image",)
    assert loaded.config | {"c_dim": 3, "z_dim": 16, "num_ws": 6, "img_resolution": 16, "network": "G_ema"} == loaded.config
    assert "NVlabs network pickle (G_ema: Generator" in loaded.describe()
    (note,) = loaded.notes
    assert note.startswith("Generator, Synthesis, ModulatedConv, Dense, Mapping restored from ")
    assert str(nv.FORMAT / "training" / "tiny_networks.py") in note and "identical to the source embedded" in note


def test_without_import_path_one_line_says_what_the_file_is(files, tmp_path, capfd):
    with pytest.raises(LoadError) as info:
        load_model(files[4], trust_pickle=True)
    text = str(info.value)
    assert "is an NVlabs network pickle (G: Generator, D: Discriminator, G_ema: Generator)" in text
    assert "pass --import-path <checkout>" in text and "never run" in text and "\n" not in text
    assert main([str(files[4]), str(tmp_path / "g.onnx")]) == 2
    line = _one_line(capfd.readouterr().err)
    assert "is an NVlabs network pickle" in line and list(tmp_path.iterdir()) == []


def test_generator_options_choose_the_network_latent_and_truncation(files, tmp_path):
    snap, path = files["snap"], files[4]

    def load(**options):
        return load_model(path, import_paths=[nv.FORMAT], generator=GeneratorOptions(**options))

    z, c = _args(3, 3, seed=1)
    assert torch.equal(_run(load(network="G").module, z, c), nv.reference(snap["G"], z, c))
    assert torch.equal(_run(load(truncation=0.5).module, z, c), nv.reference(snap["G_ema"], z, c, truncation_psi=0.5))
    ws = snap["G_ema"].mapping(z, c)
    synthesis = load(latent="w")
    assert [s.name for s in synthesis.inputs] == ["ws"] and synthesis.inputs[0].shape == (1, 6, 16)
    assert torch.equal(_run(synthesis.module, ws), _run(lambda w: snap["G_ema"].synthesis(w, noise_mode="const"), ws))
    made = synthesis.inputs[0].example((2, 6, 16), seed=3)  # mapped latents, mixed half way
    assert not torch.equal(made[:, 0], made[:, -1]) and torch.equal(made[:, 0], made[:, 2])
    psi = torch.tensor([0.3, 0.7, 1.0])
    by_input = load(truncation="input")
    assert [s.name for s in by_input.inputs] == ["z", "c", "truncation_psi"]
    expected = torch.cat([nv.reference(snap["G_ema"], z[i : i + 1], c[i : i + 1], truncation_psi=float(p)) for i, p in enumerate(psi)])
    assert relative_l2(_run(by_input.module, z, c, psi), expected) < 1e-6

    with pytest.raises(LoadError, match=r"D is a Discriminator, not a generator"):
        load(network="D")
    with pytest.raises(LoadError, match=r"holds no network 'g_ema' \(it holds G: Generator, D: Discriminator, G_ema: Generator\)"):
        load(network="g_ema")
    single = nv.write(tmp_path / "G.pkl", snap["G_ema"])  # pickle.dump of the network alone
    assert torch.equal(_run(load_model(single, import_paths=[nv.FORMAT]).module, z, c), nv.reference(snap["G_ema"], z, c))
    with pytest.raises(LoadError, match=r"holds a single network \(Generator\); drop --network G_ema"):
        load_model(single, import_paths=[nv.FORMAT], generator=GeneratorOptions(network="G_ema"))


def test_cli_exports_and_verifies_the_generator(files, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(files[3]), str(out / "g.onnx"), "--import-path", str(nv.FORMAT), "--truncation", "input", "--torchscript", str(out / "g.ts"),
            "--exporter", "torchscript", "--providers", "cpu", "--report", str(out / "g.json")]  # fmt: skip
    assert main(argv) == 0, capfd.readouterr()
    stdout = capfd.readouterr().out
    assert "NVlabs network pickle (G_ema: Generator" in stdout and "note: Generator, Synthesis" in stdout and "PASSED" in stdout
    import json

    import onnx

    from modconv_export.export.metadata import read_properties

    model = onnx.load(str(out / "g.onnx"))
    assert [i.name for i in model.graph.input] == ["z", "c", "truncation_psi"] and [o.name for o in model.graph.output] == ["image"]
    image = json.loads(read_properties(out / "g.onnx")["modconv_export.outputs"])["image"]
    assert image["range"] == [-1.0, 1.0] and image["noise_mode"] == "const" and image["truncation_psi"] == "input"
    assert json.loads((out / "g.json").read_text())["model"]["notes"][0].startswith("Generator, Synthesis")
    from helpers import run_exported

    G = files["snap"]["G_ema"]
    for batch in (1, 3):
        z, c = _args(batch, 3, seed=batch)
        psi = torch.linspace(0.5, 1.0, batch)
        expected = torch.cat([nv.reference(G, z[i : i + 1], c[i : i + 1], truncation_psi=float(p)) for i, p in enumerate(psi)])
        for fmt, path in (("onnx", out / "g.onnx"), ("jit", out / "g.ts")):
            assert relative_l2(run_exported(fmt, path, (z, c, psi)), expected) <= 1e-5, (fmt, batch)


def test_a_checkout_that_differs_from_the_embedded_source(files, tmp_path):
    """Comments changed: restored from the checkout, which the note and a warning say differs. An attribute the
    checkout's class sets but the file's state lacks: refused by the strict restore."""
    checkout = tmp_path / "checkout"
    shutil.copytree(nv.FORMAT, checkout)
    source = checkout / "training" / "tiny_networks.py"
    text = source.read_text()
    source.write_text(text.replace("def normalize_2nd_moment", "# a comment only this checkout has\ndef normalize_2nd_moment"))
    with nv.packages_set_aside(), pytest.warns(UserWarning, match="differs from the source embedded in the file"):
        loaded = load_model(files[4], import_paths=[checkout])
        assert all(f"{source}, which differs from the source embedded in the file (" in n for n in loaded.notes)
        args = _args(2, 3)
        assert torch.equal(_run(loaded.module, *args), nv.reference(files["snap"]["G_ema"], *args))
    source.write_text(text.replace("self.bias_gain = lr_multiplier", "self.bias_gain = lr_multiplier\n        self.extra_scale = 1.0"))
    with nv.packages_set_aside(), pytest.warns(UserWarning, match="differs"), pytest.raises(LoadError, match=r"\(Dense from .*tiny_networks\.py\) does not restore strictly: the "
                                        r"checkout's class sets extra_scale, which the file's state lacks; the file was written by other "
                                        r"code \(\d+% of its lines in common\)"):  # fmt: skip
        load_model(files[4], import_paths=[checkout])


def test_a_torch_save_file_holding_nvlabs_networks_needs_no_allow_global(files, tmp_path):
    """torch.save of a network (zip format): read by torch's weights_only unpickler, the records restored from the
    checkout; the source embedded in it (here one that would touch a marker) never runs."""
    marker = tmp_path / "marker"
    G = files["plain"]["G_ema"]
    with nv.fixture_on_path():
        path = tmp_path / "g.pt"
        torch.save({"G_ema": nv.persisted(G, module_src=_payload_source(G, marker))}, path, pickle_module=_RAW, pickle_protocol=2)
    with pytest.warns(UserWarning, match="differs from the source embedded in the file"):
        loaded = load_model(path, trust_pickle=True, import_paths=[nv.FORMAT])
    (z,) = _args(2, 0)
    assert type(loaded.module).__name__ == "Generator" and loaded.module is not G
    assert torch.equal(nv.reference(loaded.module, z, None), nv.reference(G, z, None))
    assert any("differs from the source embedded" in n for n in loaded.notes) and not marker.exists()


# -- hostile files --------------------------------------------------------------------------------------


class _RawModule:
    """``torch.save(..., pickle_module=_RAW)`` with the test pickler (expressions holding real objects)."""

    Pickler = nv._Pickler
    __name__ = "nvlabs_pickles"

    @staticmethod
    def dump(obj, f, protocol=2):
        nv._Pickler(f, protocol).dump(obj)


_RAW = _RawModule()


def _payload_source(network: torch.nn.Module, marker: Path) -> str:
    """The network's own module source with a payload that runs when the source is executed."""
    return f"import os as _os\n_os.system('touch {marker}')\n" + network._module_source


def _legacy_blob(pickled_object: bytes, numel: int, data: bytes) -> bytes:
    """A ``torch.save`` legacy-format blob as ``torch.storage._load_from_bytes`` receives it."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}
    head = b"".join(plain_pickle(v) for v in (0x1950A86A20F9469CFC6C, 1001, info))
    return head + pickled_object + plain_pickle(["0"]) + struct.pack("<q", numel) + data


def _storage_blob(numel: int, data: bytes) -> bytes:
    from pickle_payloads import Persistent

    return _legacy_blob(plain_pickle(Persistent(("storage", G("torch", "FloatStorage"), "0", "cpu", numel, None))), numel, data)


def _with(snap: dict, path: str, name: str, value) -> dict:
    """``snap`` with ``value`` set as attribute ``name`` of the module at ``path`` (``"G_ema.synthesis"``)."""
    module = snap[path.split(".")[0]]
    for part in path.split(".")[1:]:
        module = getattr(module, part)
    module.__dict__[name] = value
    return snap


def _tensor(storage, size, stride):
    return Call(G("torch._utils", "_rebuild_tensor_v2"), storage, 0, size, stride, False, Call(G("collections", "OrderedDict")))


def _huge_opcode(_c, _snap) -> bytes:
    """A file that names the persistence global, then declares a 2**40-byte bytes object."""
    return b"\x80\x04ctorch_utils.persistence\n_reconstruct_persistent_obj\n" + b"\x8e" + struct.pack("<Q", 2**40) + b"\0" * 64


def _deeply_nested(_c, _snap) -> bytes:
    """The persistence global (pushed, then popped), then ``{'G_ema': [[[...]]]}`` 100,000 lists deep."""
    lists = b"]" * 100_000 + b"a" * 99_999
    return b"\x80\x04ctorch_utils.persistence\n_reconstruct_persistent_obj\n0}\x8c\x05G_ema" + lists + b"s."


def _truncated(_c, snap) -> bytes:
    data = nv.dumps(snap)
    return data[: len(data) * 3 // 5]


def _no_up(c, snap):
    conv = snap["G_ema"].synthesis.up8
    state = {k: v for k, v in conv.__dict__.items() if k != "up"}
    snap["G_ema"].synthesis._modules["up8"] = nv.persisted(conv, state=state)
    return snap


def _replaced(snap: dict, **meta) -> dict:
    """``snap`` with ``G_ema``'s persistence metadata changed as ``meta`` says (its state as it is)."""
    snap["G_ema"] = nv.persisted(snap["G_ema"], **meta)
    return snap


#: name -> (build(marker, snapshot) -> object or raw bytes, what the refusal says (None: it loads), whether a control runs it)
HOSTILE: dict[str, tuple[Callable, str | None, bool]] = {
    "the embedded source runs code at import (state genuine)": (lambda m, s: _replaced(s, module_src=_payload_source(s["G_ema"], m)), None, True),
    "the state hides a call of os.system": (lambda m, s: _with(s, "G_ema.synthesis", "evil", Call(G("os", "system"), f"touch {m}")), r"globals outside the allowlist: os\.system", True),
    "a storage blob holds a nested pickle that calls os.system": (lambda m, s: _with(s, "G_ema.mapping", "evil", Call(G("torch.storage", "_load_from_bytes"), _legacy_blob(plain_pickle(Call(G("os", "system"), f"touch {m}")), 0, b""))), r"storage blob .* is refused: it needs the Python global os\.system", True),
    "class_name of no class in the checkout": (lambda m, s: _replaced(s, class_name="Popen", module_src=_payload_source(s["G_ema"], m) + "from subprocess import Popen\n"), r"G_ema is a persistence object of class Popen, which no Python file under --import-path .* defines", True),
    "class_name of a function of the checkout": (lambda m, s: _replaced(s, class_name="normalize_2nd_moment", module_src=_payload_source(s["G_ema"], m)), r"class normalize_2nd_moment, which no Python file", True),
    "class_name of a checkout class that is a dict (dnnlib's EasyDict)": (lambda m, s: _replaced(s, class_name="EasyDict", module_src=_payload_source(s["G_ema"], m)), r"class EasyDict of .*dnnlib/util\.py derives from builtins\.dict", True),
    "a network replaced by a call of os.system": (lambda m, s: {**s, "G_ema": Call(G("os", "system"), f"touch {m}")}, r"outside the allowlist: os\.system", True),
    "a class of the import path called with the file's arguments": (lambda m, s: {**s, "G_ema": Call(G("user_code_layers", "Recorder"), str(m))}, r"the file calls user_code_layers\.Recorder\(\.\.\.\)", True),
    "a name computed while unpickling (STACK_GLOBAL)": (lambda m, s: {**s, "G_ema": Call(StackGlobal(Call(G("codecs", "decode"), "bf", "rot13"), "system"), f"touch {m}")}, r"codecs\.decode", True),
    "persistence metadata with a field of its own": (lambda m, s: _replaced(s, module_src=_payload_source(s["G_ema"], m), loader="x"), r"a persistence object with unexpected metadata \(\['class_name', 'loader'", True),
    "a persistence version NVlabs never wrote": (lambda m, s: _replaced(s, module_src=_payload_source(s["G_ema"], m), version=99), r"version 99 \(NVlabs writes type 'class', versions 1-6\)", True),
    "a huge declared tensor in a storage blob": (lambda m, s: _with(s, "G_ema.mapping", "w_avg2", _tensor(Call(G("torch.storage", "_load_from_bytes"), _storage_blob(2**40, b"\0" * 16)), (2**40,), (1,))), r"declares 1,099,511,627,776 float32 elements \(4,398,046,511,104 bytes\) but holds 16 bytes", False),
    "a view repeating one element 2**40 times": (lambda m, s: _with(s, "G_ema.mapping", "w_avg2", _tensor(Call(G("torch.storage", "_load_from_bytes"), _storage_blob(1, b"\0" * 4)), (2**40,), (0,))), r"a tensor of shape \[1099511627776\] \(stride \[0\], offset 0\) needs more than its storage's 1 elements", False),
    "an opcode declaring 2**40 bytes": (_huge_opcode, r"an opcode declares 1,099,511,627,776 bytes, but the file has \d+ left", False),
    "a truncated network pickle": (_truncated, r"is truncated or corrupt", False),
    "data nested 100,000 lists deep": (_deeply_nested, r"is malformed: .*(nest|unfinished values).*refused before unpickling", False),
    "the state sets forward (a method of the class)": (lambda m, s: _with(s, "G_ema.synthesis", "forward", G("torch.nn.functional", "relu")), r"G_ema\.synthesis \(Synthesis from .*\): its state sets 'forward', which the class defines as a method", False),
    "the state registers a forward hook": (lambda m, s: _with(s, "G_ema.synthesis.torgb", "_forward_hooks", {0: G("torch.nn.functional", "relu")}), r"G_ema\.synthesis\.torgb .*registers hooks \(_forward_hooks\)", False),
    "the state lacks an attribute the checkout's class sets": (_no_up, r"G_ema\.synthesis\.up8 \(ModulatedConv from .*\) does not restore strictly: the checkout's class sets up, which the file's state lacks", False),
}  # fmt: skip


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR) and "Traceback" not in stderr, stderr
    return lines[0]


def _control(path: Path) -> None:
    """What NVlabs' loader does with the file: plain ``pickle.load``, running what the file says."""
    sys.path[:0] = [str(nv.FORMAT), str(USER_CODE)]
    try:
        with nv.fixture_on_path(), path.open("rb") as f:
            pickle.load(f)
    except Exception:
        pass  # many payloads fail after their side effect; the marker is what counts
    finally:
        sys.path.remove(str(nv.FORMAT))
        sys.path.remove(str(USER_CODE))


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_file_is_refused_and_nothing_runs(kind, files, tmp_path, capfd):
    build, refusal, live = HOSTILE[kind]
    marker = tmp_path / "marker"
    made = build(marker, nv.snapshot(c_dim=0, seed=4))
    path = tmp_path / "hostile.pkl"
    path.write_bytes(made) if isinstance(made, bytes) else nv.write(path, made)
    out = tmp_path / "out"
    out.mkdir()
    capfd.readouterr()
    start = time.perf_counter()
    if refusal is None:  # a genuine state under hostile source: built from the checkout, the source never run
        with pytest.warns(UserWarning, match="differs from the source embedded in the file"):
            loaded = load_model(path, import_paths=[nv.FORMAT, USER_CODE])
        (z,) = _args(2, 0)
        assert torch.equal(_run(loaded.module, z), nv.reference(files["plain"]["G_ema"], z, None))
        assert "Generator restored from" in loaded.notes[0] and "differs from the source embedded" in loaded.notes[0]
    else:
        code = main(
            [
                str(path),
                str(out / "g.onnx"),
                "--import-path",
                str(nv.FORMAT),
                "--import-path",
                str(USER_CODE),
                "--torchscript",
                str(out / "g.ts"),
            ]
        )
        line = _one_line(capfd.readouterr().err)
        assert code == 2 and re.search(refusal, line), line
        assert list(out.iterdir()) == []
    assert time.perf_counter() - start < 20  # no 4 TB allocation was attempted
    time.sleep(0.05)
    assert not marker.exists(), "the payload ran inside the toolkit"
    if live:
        _control(path)
        assert marker.exists(), f"the control did not run the payload: {kind} is not live"


def test_hostile_table_covers_the_issue():
    assert len(HOSTILE) >= 15 and sum(live for _, _, live in HOSTILE.values()) >= 8


def test_numpy_data_of_the_format_is_data(files):
    """NumPy scalars and arrays in a network's state (NVlabs keeps gains and filter taps so) come back as such."""
    loaded = load_model(files[5], import_paths=[nv.FORMAT])
    conv = loaded.module.generator.synthesis.conv4
    assert type(conv.affine.weight_gain) is np.float64 and conv.blur_taps.dtype == np.float32
    assert np.array_equal(conv.blur_taps, [1, 2, 1])
