"""The load stage: every kind of model file, and every way a file can be wrong, as one clear LoadError."""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from modconv_export import LoadError, ModconvExportError, load_checkpoint, load_model, save_checkpoint
from modconv_export.families import Family, InputSpec, get_family, register_family
from modconv_export.families import registry as family_registry

from helpers import FIXTURES
from pickle_payloads import Touch

FOREIGN_LAYERS = FIXTURES / "foreign_layers"
DECODER_CONFIG = {"latent_dim": 16, "n_mlp": 2, "channels": [8, 8], "output_nc": 3}


# -- a test-only family, so strict-load messages do not depend on the real families' layouts --------


class TinyFamilyModel(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.tiny_stem = nn.Linear(4, width)
        self.tiny_head = nn.Linear(width, 2)
        self.register_buffer("tiny_scale", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tiny_head(self.tiny_stem(x)) * self.tiny_scale


def _infer_tiny(state):
    if "tiny_stem.weight" not in state:
        raise ValueError("no tiny_stem.weight")
    return {"width": int(state["tiny_stem.weight"].shape[0])}


@pytest.fixture
def tiny_family():
    family = register_family(
        Family(
            name="tiny-test",
            description="test-only family",
            key_patterns=(r"^tiny_stem\.weight$", r"^tiny_head\.weight$"),
            infer_config=_infer_tiny,
            build=lambda config: TinyFamilyModel(config["width"]).eval(),
            inputs=lambda config: [InputSpec("x", (1, 4))],
            outputs=("y",),
        )
    )
    yield family
    family_registry.FAMILIES.unregister(family.name)


def _tiny_state(width: int = 6, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return TinyFamilyModel(width).state_dict()


@pytest.fixture(scope="module")
def decoder_state() -> dict:
    torch.manual_seed(3)
    return get_family("decoder").build(DECODER_CONFIG).state_dict()


@pytest.fixture
def foreign_modules(monkeypatch):
    """The user's own layer module, importable as a top-level module (as in the user's project)."""
    monkeypatch.syspath_prepend(str(FOREIGN_LAYERS))
    import thirdparty_gan
    import tricky_models

    return thirdparty_gan, tricky_models


def _assert_same_weights(module: nn.Module, state: dict) -> None:
    got = module.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key


# -- the three kinds ---------------------------------------------------------------------------------


def test_toolkit_checkpoint_round_trip(tmp_path, decoder_state):
    path = save_checkpoint(tmp_path / "g.pt", "decoder", DECODER_CONFIG, decoder_state)
    ckpt = load_checkpoint(path)
    assert ckpt.family == "decoder" and ckpt.config == DECODER_CONFIG
    loaded = load_model(path)
    assert loaded.kind == "checkpoint" and loaded.family.name == "decoder" and loaded.config == DECODER_CONFIG
    assert not loaded.module.training
    _assert_same_weights(loaded.module, decoder_state)
    assert [s.name for s in loaded.inputs] == ["latent"] and loaded.inputs[0].shape == (1, 16)
    # the original reference layers, not export forms: rewriting is the next stage's job
    assert type(loaded.module.blocks[0].conv0).__name__ == "ModulatedConv2d"


@pytest.mark.parametrize("wrap", ["bare", "params_ema", "state_dict", "dataparallel"])
def test_bare_state_dict_is_recognised(tmp_path, decoder_state, wrap):
    obj = {
        "bare": decoder_state,
        "params_ema": {"params_ema": decoder_state, "iter": 7},
        "state_dict": {"state_dict": decoder_state, "epoch": 3},
        "dataparallel": {f"module.{k}": v for k, v in decoder_state.items()},
    }[wrap]
    torch.save(obj, tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt")
    assert loaded.kind == "state_dict" and loaded.family.name == "decoder"
    assert loaded.config == DECODER_CONFIG
    _assert_same_weights(loaded.module, decoder_state)


def test_pickled_module_needs_trust_and_loads_with_it(tmp_path, foreign_modules):
    thirdparty_gan, _ = foreign_modules
    model = thirdparty_gan.randomized(thirdparty_gan.ToyGenerator())
    torch.save(model, tmp_path / "g.pt")
    with pytest.raises(LoadError, match=r"needs the Python global thirdparty_gan\.ToyGenerator.*--trust-pickle"):
        load_model(tmp_path / "g.pt")
    with pytest.raises(LoadError, match=r"refused even with --trust-pickle: .*thirdparty_gan\.ToyGenerator"):
        load_model(tmp_path / "g.pt", trust_pickle=True)  # importable, but from no directory the user named
    loaded = load_model(tmp_path / "g.pt", trust_pickle=True, import_paths=[FOREIGN_LAYERS])
    assert loaded.kind == "pickle" and loaded.family is None and loaded.inputs is None
    _assert_same_weights(loaded.module, model.state_dict())
    x = (torch.randn(2, 3, 8, 8), torch.randn(2, 16))
    with torch.no_grad():
        assert torch.equal(loaded.module(*x), model(*x))


def test_pickled_family_model_gets_the_family_inputs(tmp_path):
    model = get_family("decoder").build(DECODER_CONFIG)
    torch.save(model, tmp_path / "g.pt")
    loaded = load_model(tmp_path / "g.pt", trust_pickle=True)
    assert loaded.kind == "pickle" and loaded.family.name == "decoder"
    assert [s.name for s in loaded.inputs] == ["latent"]


def test_trusted_pickle_imports_from_import_path_or_cwd_and_restores_sys_path(tmp_path, monkeypatch, foreign_modules):
    thirdparty_gan, _ = foreign_modules
    torch.save(thirdparty_gan.ToyGenerator(), tmp_path / "g.pt")
    monkeypatch.delitem(sys.modules, "thirdparty_gan")  # a fresh process: the class is not imported yet
    sys.path.remove(str(FOREIGN_LAYERS))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        LoadError,
        match=r"thirdparty_gan\.ToyGenerator \(module 'thirdparty_gan' is in no --import-path directory nor the current directory\)",
    ):
        load_model(tmp_path / "g.pt", trust_pickle=True)
    before = list(sys.path)
    assert load_model(tmp_path / "g.pt", trust_pickle=True, import_paths=[FOREIGN_LAYERS]).kind == "pickle"
    assert sys.path == before
    monkeypatch.delitem(sys.modules, "thirdparty_gan")
    monkeypatch.chdir(FOREIGN_LAYERS)  # the current directory is on the path too
    assert load_model(tmp_path / "g.pt", trust_pickle=True).kind == "pickle"
    with pytest.raises(LoadError, match="not a directory"):
        load_model(tmp_path / "g.pt", trust_pickle=True, import_paths=[tmp_path / "nope"])


# -- files that are not models -----------------------------------------------------------------------


def _zip_with_flipped_byte(src: Path, dst: Path, member_suffix: str) -> None:
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.file_size // 2] ^= 0xFF
    dst.write_bytes(bytes(data))


def _bad_files(tmp: Path, decoder_state: dict) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.pt"
    save_checkpoint(good, "decoder", DECODER_CONFIG, decoder_state)
    raw = good.read_bytes()
    (tmp / "dir.pt").mkdir()
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "notes.pt").write_text("these are not weights\n")
    (tmp / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    _zip_with_flipped_byte(good, tmp / "corrupt.pt", "data/0")
    _zip_with_flipped_byte(good, tmp / "corrupt_pickle.pt", "data.pkl")
    torch.save(decoder_state, tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp / "legacy.pt").read_bytes()
    (tmp / "legacy_truncated.pt").write_bytes(legacy[: len(legacy) // 3])
    (tmp / "plain.pkl").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    (tmp / "random.bin").write_bytes(bytes(range(256)) * 4)
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), tmp / "scripted.pt")
    torch.save([1, 2, 3], tmp / "list.pt")
    return {
        "missing": (tmp / "absent.pt", "no such file"),
        "directory": (tmp / "dir.pt", "is a directory"),
        "empty": (tmp / "empty.pt", r"is empty \(0 bytes\)"),
        "text": (tmp / "notes.pt", "is a text file"),
        "truncated zip": (tmp / "truncated.pt", "truncated or corrupt"),
        "corrupt tensor data": (tmp / "corrupt.pt", "corrupt .checksum mismatch in .*data/0"),
        "corrupt pickle": (tmp / "corrupt_pickle.pt", "corrupt .checksum mismatch in .*data.pkl"),
        "truncated legacy": (tmp / "legacy_truncated.pt", "truncated or corrupt"),
        "plain pickle": (tmp / "plain.pkl", "plain pickle"),
        "random bytes": (tmp / "random.bin", "not a PyTorch file"),
        "torchscript": (tmp / "scripted.pt", "TorchScript archive"),
        "not a model": (tmp / "list.pt", "holds a list, not a model"),
    }


BAD_FILE_CASES = ["missing", "directory", "empty", "text", "truncated zip", "corrupt tensor data", "corrupt pickle",
                  "truncated legacy", "plain pickle", "random bytes", "torchscript", "not a model"]  # fmt: skip


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, decoder_state):
    return _bad_files(tmp_path_factory.mktemp("bad"), decoder_state)


@pytest.mark.parametrize("case", BAD_FILE_CASES)
@pytest.mark.parametrize("trust", [False, True])
def test_unreadable_files_are_one_line_load_errors(bad_files, case, trust):
    path, pattern = bad_files[case]
    with pytest.raises(LoadError, match=pattern) as info:
        load_model(path, trust_pickle=trust)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(info.value, ModconvExportError)


def test_legacy_format_state_dict_loads(bad_files, decoder_state):
    legacy = bad_files["truncated legacy"][0].with_name("legacy.pt")
    _assert_same_weights(load_model(legacy).module, decoder_state)


# -- malicious pickles -------------------------------------------------------------------------------


class _PathTouch:
    """A payload no denylist names (``pathlib.Path.touch``): only the weights_only loader stops it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_never_runs(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    payload = {"weight": torch.zeros(2), "hook": Touch(marker)}
    torch.save(payload, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(LoadError, match=r"posix\.system|nt\.system") as info:
        load_model(tmp_path / "evil.pt")
    assert "--trust-pickle" in str(info.value)
    # even a user who trusts the file is protected from a pickle that runs shell commands
    with pytest.raises(LoadError, match=r"refused even with --trust-pickle: it needs globals outside the allowlist: (posix|nt)\.system"):
        load_model(tmp_path / "evil.pt", trust_pickle=True)
    torch.save({"model": _PathTouch(marker)}, tmp_path / "sneaky.pt")
    with pytest.raises(LoadError, match=r"needs the Python global .*--trust-pickle"):
        load_model(tmp_path / "sneaky.pt")
    assert not marker.exists()


# -- weights that do not fit -------------------------------------------------------------------------


def test_unknown_family_says_which_keys_were_looked_for(tmp_path, tiny_family):
    torch.save({"encoder.conv.weight": torch.zeros(3, 3), "encoder.conv.bias": torch.zeros(3)}, tmp_path / "sd.pt")
    with pytest.raises(LoadError, match=r"matches no known model family; looked for: .*tiny-test \(keys like .*tiny_stem") as info:
        load_model(tmp_path / "sd.pt")
    assert "\n" not in str(info.value)


def test_strict_load_lists_missing_unexpected_and_mismatched_keys(tmp_path, tiny_family):
    state = _tiny_state(width=6)
    del state["tiny_scale"]
    state["tiny_extra.weight"] = torch.zeros(1)
    state["tiny_head.weight"] = torch.zeros(2, 5)  # the stem says width 6
    torch.save(state, tmp_path / "sd.pt")
    with pytest.raises(LoadError) as info:
        load_model(tmp_path / "sd.pt")
    message = str(info.value)
    assert "\n" not in message and "does not fit family 'tiny-test'" in message
    assert "missing keys: tiny_scale" in message
    assert "unexpected keys: tiny_extra.weight" in message
    assert "shape mismatches: tiny_head.weight (file [2, 5], model [2, 6])" in message


def test_strict_load_lists_only_the_first_few(tmp_path, decoder_state):
    wrong = dict(DECODER_CONFIG, channels=[8, 16])
    save_checkpoint(tmp_path / "g.pt", "decoder", wrong, decoder_state)
    with pytest.raises(LoadError, match=r"shape mismatches: blocks\.1\.[^;]*\(\+\d+ more\)"):
        load_model(tmp_path / "g.pt")


def test_checkpoint_of_unknown_family(tmp_path, decoder_state):
    save_checkpoint(tmp_path / "g.pt", "no-such-family", {}, decoder_state)
    with pytest.raises(LoadError, match=r"unknown model family 'no-such-family' \(known: .*decoder"):
        load_model(tmp_path / "g.pt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(tmp_path, tiny_family, bad):
    state = _tiny_state()
    state["tiny_head.bias"][1] = bad
    state["tiny_scale"][0] = -bad
    torch.save(state, tmp_path / "sd.pt")
    kind = "NaN" if bad != bad else "Inf"
    with pytest.raises(LoadError, match=rf"weights contain NaN/Inf: tiny_head\.bias \(1 {kind}\), tiny_scale \(1 {kind}\)"):
        load_model(tmp_path / "sd.pt")
