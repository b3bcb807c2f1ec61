"""Resource bombs are malformed files: refused in one line before anything is allocated, each proven live.

A model hub receives files that inflate to gigabytes, declare storages far beyond the bytes present, or nest
their data a million levels deep. The loader measures each from the zip directory and the pickle's opcodes
(:mod:`modconv_export.load.files`, :mod:`modconv_export.load.pickle_scan`) before torch reads any of it; the
fuzz suite (tests/cli/test_fuzz.py) runs seeded variants with their time and memory checked.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from modconv_export import ModconvExportError, load_model, save_checkpoint
from modconv_export._util import short_repr
from modconv_export.families import get_family
from modconv_export.load.pickle_scan import MAX_DEPTH, scan_pickle

from pickle_payloads import deep, emit, legacy_bomb, plain_pickle, save, tensor, zip_bomb

MiB, GiB = 2**20, 2**30
DECODER_CONFIG = {"latent_dim": 16, "n_mlp": 2, "channels": [8, 8], "output_nc": 3}


@pytest.fixture(scope="module")
def decoder_state() -> dict:
    torch.manual_seed(3)
    return get_family("decoder").build(DECODER_CONFIG).state_dict()


def _checkpoint(state: dict, **changes) -> dict:
    return {"format": "modconv-export", "version": 1, "family": "decoder", "config": dict(DECODER_CONFIG), "state_dict": state, **changes}


#: name -> (write the file into a folder, the refusal it must get)
BOMBS = {
    "deflated tensor, 12 GiB from 12 MiB": (
        lambda d, s: zip_bomb(d / "b.pt", {"w": tensor("0", 3 * GiB)}, {"0": 12 * GiB}, crc=False),
        r"malformed: compressed tensor entry archive/data/0 \(11\.\d MiB inflating to 12\.0 GiB; torch\.save stores tensor data uncompressed\)",
    ),
    "deflated pickle record": (
        lambda d, s: zip_bomb(d / "b.pt", {"w": tensor("0", 4)}, {"0": bytes(16)}, pickle_zeros=GiB),
        r"malformed: its compressed records inflate to 1\.0 GiB from a 10\d\d\.\d KiB archive \(torch\.save compresses nothing\)$",
    ),
    "declares 12 GiB in a tiny archive": (
        lambda d, s: zip_bomb(d / "b.pt", {"w": tensor("0", 3 * GiB)}, {"0": bytes(16)}),
        r"truncated or corrupt: it declares 12\.0 GiB of tensor data in a \d+ B archive$",
    ),
    "a storage larger than its record": (
        lambda d, s: zip_bomb(d / "b.pt", {"w": tensor("0", 256), "pad": tensor("1", 0)}, {"0": bytes(16), "1": bytes(4096)}),
        r"malformed: tensor storage '0' declares 1\.0 KiB but its record holds 16 B$",
    ),
    "a storage with no record": (
        lambda d, s: zip_bomb(d / "b.pt", {"w": tensor("0", 4), "v": tensor("7", 4)}, {"0": bytes(16), "pad": bytes(64)}),
        r"malformed: tensor storage '7' declares 16 B but the archive has no record of it$",
    ),
    "legacy, 1 PiB declared": (
        lambda d, s: legacy_bomb(d / "b.pt", {"w": tensor("1", 2**48, legacy=True)}, {"1": (4, bytes(16))}),
        r"truncated or corrupt: it declares 1\.0 PiB of tensor data in a \d+ B file$",
    ),
    "legacy, size fields claim 8 GiB": (
        lambda d, s: legacy_bomb(d / "b.pt", {"w": tensor("1", 2**31, legacy=True)}, {"1": (2**31, bytes(64))}),
        r"truncated or corrupt: it declares 8\.0 GiB of tensor data in a \d+ B file$",
    ),
    "config nested a million levels": (
        lambda d, s: save(_checkpoint(s, config={**DECODER_CONFIG, "channels": deep(10**6, "list")}), d / "b.pt"),
        r"malformed: its pickle holds more than 100000 unfinished values at once",
    ),
    "tuple key nested a million levels (hashing it crashes)": (
        lambda d, s: save({deep(10**6, "tuple"): 1}, d / "b.pt", legacy=True),
        rf"malformed: its data nests more than {MAX_DEPTH} levels deep \(refused before unpickling\)$",
    ),
    "version nested through the memo": (
        lambda d, s: save(_checkpoint(s, version=deep(20_000, "adopted")), d / "b.pt"),
        r"unsupported modconv-export checkpoint version \[\[\[\[\.\.\.\]\]\], .{0,40} \(this toolkit reads 1\)$",
    ),
    "config of a million numbers": (
        lambda d, s: save(_checkpoint(s, config={**DECODER_CONFIG, "channels": list(range(200_000))}), d / "b.pt"),
        r"family 'decoder' cannot be built with config \{'latent_dim': 16, 'n_mlp': 2, 'channels': \[0, 1, 2, 3, 4, 5, \.\.\.\], .*",
    ),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_bomb_is_one_short_line_before_any_allocation(name, tmp_path, decoder_state):
    write, pattern = BOMBS[name]
    path = write(tmp_path, decoder_state)
    start = time.perf_counter()
    with pytest.raises(ModconvExportError) as info:  # LoadError, or CheckpointError for a toolkit checkpoint
        load_model(path)
    seconds = time.perf_counter() - start
    message = str(info.value)
    assert message.startswith(f"{path}: ") and re.search(pattern, message), message
    assert "\n" not in message and len(message) < len(str(path)) + 400, message
    assert seconds < 3.0, f"{name}: {seconds:.1f} s"


def test_the_bombs_are_live(tmp_path, decoder_state):
    """Controls: what plain torch and pickle do with the same kinds of file."""
    small = zip_bomb(tmp_path / "inflates.pt", {"w": tensor("0", 16 * MiB)}, {"0": 64 * MiB})
    assert small.stat().st_size < MiB and torch.load(small, weights_only=True)["w"].numel() == 16 * MiB  # inflated
    legacy = legacy_bomb(tmp_path / "legacy.pt", {"w": tensor("1", 2**48, legacy=True)}, {"1": (4, bytes(16))})
    with pytest.raises(RuntimeError, match="allocate 1125899906842624 bytes"):
        torch.load(legacy, weights_only=True)
    nested = save(_checkpoint(decoder_state, version=deep(20_000, "adopted")), tmp_path / "nested.pt")
    with pytest.raises(RecursionError):
        repr(torch.load(nested, weights_only=True)["version"])
    crash = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=plain_pickle({deep(10**6, "tuple"): 1}),
        capture_output=True,
        timeout=60,
    )
    assert crash.returncode < 0, "hashing a tuple nested a million levels no longer crashes the interpreter"


def test_what_torch_save_writes_still_loads(tmp_path, decoder_state):
    """No false alarm: a re-packed archive whose small records are deflated, a state dict beside a nested
    config, and a module nested 30 levels deep (about 100 pickle levels) all load."""
    good = tmp_path / "good.pt"
    save_checkpoint(good, "decoder", DECODER_CONFIG, decoder_state)
    repacked = tmp_path / "repacked.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(repacked, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_STORED if "/data/" in info.filename else zipfile.ZIP_DEFLATED
            dst.writestr(info.filename, src.read(info), compress_type=method)
    assert load_model(repacked).family.name == "decoder"
    torch.save({"g_ema": decoder_state, "args": {"schedule": [[[[{"lr": 1e-3}]]]] * 50}}, tmp_path / "training.pt")
    assert load_model(tmp_path / "training.pt").family.name == "decoder"
    module = torch.nn.Linear(2, 2)
    for _ in range(30):
        module = torch.nn.Sequential(module)
    torch.save(module, tmp_path / "nested_module.pt")
    assert load_model(tmp_path / "nested_module.pt", trust_pickle=True, import_paths=[]).kind == "pickle"


@pytest.mark.parametrize("how", ["list", "memo", "dict", "marks", "tuple"])
def test_the_scan_stops_a_deep_nesting_early(how):
    """Each way of writing a deep nesting is refused after a bounded number of opcodes, not at its end."""
    data = b"\x80\x02" + emit(deep(10**6, how)) + b"."
    start = time.perf_counter()
    with pytest.raises(ValueError, match="nests more than|unfinished values"):
        scan_pickle(io.BytesIO(data))
    assert time.perf_counter() - start < 2.0
    assert scan_pickle(io.BytesIO(b"\x80\x02" + emit(deep(MAX_DEPTH - 1, how)) + b".")).depth == MAX_DEPTH - 1


def test_the_scan_declares_what_torch_allocates(tmp_path):
    torch.save({"a": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.float16), "view": None}, tmp_path / "t.pt")
    with zipfile.ZipFile(tmp_path / "t.pt") as zf:
        facts = scan_pickle(zf.open(next(n for n in zf.namelist() if n.endswith("data.pkl"))))
    assert sorted(facts.storages.values()) == [14, 60]
    assert "torch._utils._rebuild_tensor_v2" in facts.globals


def test_short_repr_is_bounded_in_depth_length_and_time():
    nested: list = []
    for _ in range(10**5):
        nested = [nested]
    wide, long_text, big = {f"k{i}": i for i in range(10**5, 0, -1)}, "x" * 10**6, 10**5000
    start = time.perf_counter()
    assert short_repr(nested) == "[[[[...]]]]"
    assert short_repr(wide) == "{'k100000': 100000, 'k99999': 99999, 'k99998': 99998, 'k99997': 99997, ...}"  # file order, unsorted
    assert short_repr(long_text, 30) == "'" + "x" * 26 + "..."
    assert short_repr(big) == "<int>"
    assert time.perf_counter() - start < 1.0
