"""The rosinality family without upstream's code: what ``--latent`` / ``--truncation`` compute, the files it is
found in, and the bad files it refuses in one line. (Equality with upstream's own ``Generator``, at 256 and
1024 px, is in test_rosinality_upstream.py; recognition and strict loading in test_families.py.)

A 32 px generator with narrow widths (every parameter random) keeps these fast; the files are written the way
each upstream writes them (train.py, convert_weight.py, a pSp coach checkpoint)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modconv_export import make_exportable, rewrite_report
from modconv_export.cli import main
from modconv_export.errors import LoadError
from modconv_export.export.metadata import read_properties
from modconv_export.families import get_family, recognize, registry
from modconv_export.families.rosinality import infer_config, standard_channels
from modconv_export.load import GeneratorOptions, load_model, save_checkpoint
from modconv_export.rewrite.graph import GRAPH_RULES

from helpers import randomize, relative_l2

FAMILY = get_family("rosinality")
ERROR = "modconv-export: error: "


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return randomize(FAMILY.build(FAMILY.preset("small")), seed=1)


@pytest.fixture(scope="module")
def files(generator, tmp_path_factory):
    """The layouts StyleGAN users hold, for the small generator."""
    d = tmp_path_factory.mktemp("rosinality")
    state = generator.state_dict()
    avg = torch.randn(32, generator=torch.Generator().manual_seed(5))
    args = argparse.Namespace(path="lmdb", size=32, latent=32, n_mlp=2, channel_multiplier=2, ckpt=None, wandb=False, lr=0.002)
    torch.save({"g": state, "d": {"convs.0.0.weight": torch.zeros(8, 3, 1, 1)}, "g_ema": state, "g_optim": {"state": {}, "param_groups": []},
                "d_optim": {"state": {}, "param_groups": []}, "args": args, "ada_aug_p": 0.1}, d / "train.pt")  # fmt: skip
    torch.save({"g_ema": state, "latent_avg": avg}, d / "converted.pt")
    psp = {**{f"encoder.body.{i}.weight": torch.randn(4, 4) for i in range(3)}, **{f"decoder.{k}": v for k, v in state.items()}}
    torch.save(
        {"state_dict": psp, "latent_avg": avg.repeat(8, 1), "opts": {"output_size": 32, "start_from_latent_avg": True}}, d / "psp.pt"
    )
    torch.save({k: v for k, v in state.items() if not k.startswith("noises.")}, d / "no_noise.pt")
    return d, avg


def _load(path, **options):
    return load_model(path, generator=GeneratorOptions(**options))


def _z(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 32, generator=torch.Generator().manual_seed(seed))


def _w_plus(generator, z: torch.Tensor) -> torch.Tensor:
    return generator.style(z).unsqueeze(1).repeat(1, generator.n_latent, 1)


def test_every_layout_loads_the_same_generator(generator, files):
    d, _ = files
    z = _z(3)
    with torch.no_grad():
        expected = generator(z)
        for name, where in (("train", "at 'g_ema'"), ("converted", "at 'g_ema'"), ("psp", "at 'state_dict' under 'decoder.'")):
            loaded = _load(d / f"{name}.pt")
            assert loaded.family is FAMILY and loaded.where == where
            assert [s.name for s in loaded.inputs] == ["z"] and torch.equal(loaded.module(z), expected)


def test_latent_w_is_the_synthesis_network(generator, files):
    loaded = _load(files[0] / "psp.pt", latent="w")
    z = _z(2, seed=1)
    assert [(s.name, s.shape) for s in loaded.inputs] == [("ws", (1, 8, 32))]
    with torch.no_grad():
        assert torch.equal(loaded.module(_w_plus(generator, z)), generator(z))


@pytest.mark.parametrize("name", ["converted", "psp"])  # latent_avg [32] and [8, 32]
def test_truncation_pulls_towards_the_files_latent_avg(generator, files, name):
    d, avg = files
    z = _z(3, seed=2)
    with torch.no_grad():
        w = _w_plus(generator, z)
        expected = generator.synthesize(avg + 0.6 * (w - avg))
        assert torch.equal(_load(d / f"{name}.pt", truncation=0.6).module(z), expected)
        psi = torch.tensor([0.6, 1.0, 0.3])
        per_sample = _load(d / f"{name}.pt", truncation="input")
        assert [s.name for s in per_sample.inputs] == ["z", "truncation_psi"]
        rows = [generator.synthesize(avg + float(p) * (w[i : i + 1] - avg)) for i, p in enumerate(psi)]
        assert relative_l2(per_sample.module(z, psi), torch.cat(rows)) < 1e-6
        assert relative_l2(per_sample.module(z, torch.ones(3)), generator(z)) < 1e-6


@pytest.mark.parametrize("shape", [(32,), (1, 32), (8, 32), (1, 8, 32)])
def test_latent_avg_shapes_that_upstream_codebases_store(generator, tmp_path, shape):
    avg = torch.randn(shape)
    torch.save({"g_ema": generator.state_dict(), "latent_avg": avg}, tmp_path / "f.pt")
    module = _load(tmp_path / "f.pt", truncation=0.5).module
    assert torch.equal(module.latent_avg, avg.reshape(-1, 32).expand(8, 32))


def test_refusals_name_the_cause(generator, files, tmp_path):
    d, _ = files
    state = generator.state_dict()
    with pytest.raises(
        LoadError, match=r"--truncation 0\.7: truncation pulls towards the file's average latent, and this file holds no latent_avg"
    ):
        _load(d / "train.pt", truncation=0.7)
    torch.save({"g_ema": state, "latent_avg": torch.randn(3, 32)}, tmp_path / "bad_avg.pt")
    with pytest.raises(LoadError, match=r"its latent_avg has shape \[3, 32\]; expected \[32\], \[1, 32\] or \[8, 32\]"):
        _load(tmp_path / "bad_avg.pt", truncation=0.5)
    wrong = {**state, "convs.1.conv.weight": torch.randn(1, 16, 8, 3, 3)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(LoadError) as info:
        _load(tmp_path / "wrong.pt")
    assert str(info.value) == (
        f"{tmp_path / 'wrong.pt'}: does not fit family 'rosinality' "
        "(shape mismatches: convs.1.conv.weight (file [1, 16, 8, 3, 3], model [1, 32, 32, 3, 3]))"
    )
    torch.save({"ecd0.weight": torch.zeros(1), **{f"generator.{k}": v for k, v in wrong.items()}}, tmp_path / "variant.pt")
    with pytest.raises(
        LoadError, match=r"its keys under 'generator\.' looked like that family's: .*give its code \(--arch FILE\.py:CLASS\)$"
    ):
        _load(tmp_path / "variant.pt")  # another codebase's variant inside a larger model (GPEN's FullGenerator)
    torch.save({f"a.{k}": v for k, v in state.items()} | {f"b.{k}": v for k, v in state.items()}, tmp_path / "two.pt")
    with pytest.raises(
        LoadError, match=r"holds 2 models \(rosinality under 'a\.', rosinality under 'b\.'\): choose one with --state-dict-key a$"
    ):
        _load(tmp_path / "two.pt")
    assert torch.equal(load_model(tmp_path / "two.pt", state_dict_key="b").module.input.input, generator.input.input)


def test_toolkit_checkpoint_keeps_its_options_and_takes_new_ones(generator, files, tmp_path):
    truncated = _load(files[0] / "converted.pt", latent="w", truncation=0.5)
    save_checkpoint(tmp_path / "c.pt", "rosinality", truncated.config, truncated.module.state_dict())
    ws = _w_plus(generator, _z(2, seed=4))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "c.pt").module(ws), truncated.module(ws))
        again = _load(tmp_path / "c.pt", truncation=0.8)  # the stored latent_avg serves the new psi
        assert again.config["latent"] == "z" and torch.equal(again.module.latent_avg, truncated.module.latent_avg)


def _twin():
    return registry.Family("twin", "the same keys", FAMILY.key_patterns, FAMILY.infer_config, FAMILY.build, FAMILY.inputs, ("image",))


def test_two_families_matching_one_state_dict_is_ambiguous(generator):
    families = registry.FamilyRegistry([FAMILY, _twin()])
    with pytest.raises(registry.AmbiguousFamilyError, match=r"^state_dict matches 2 model families \(rosinality, twin\): it is ambiguous$"):
        recognize(generator.state_dict(), families=families)
    assert recognize(generator.state_dict()) is FAMILY  # the toolkit's registry has one family with these keys


def test_a_file_two_families_match_is_refused_naming_both(generator, tmp_path):
    """Loading never picks one of two matching families: one LoadError line names both, nothing loads."""
    torch.save(generator.state_dict(), tmp_path / "g.pt")
    registry.FAMILIES.register(_twin())
    try:
        with pytest.raises(LoadError) as caught:
            load_model(tmp_path / "g.pt")
    finally:
        registry.FAMILIES.unregister("twin")
    assert str(caught.value) == f"{tmp_path / 'g.pt'}: state_dict matches 2 model families (rosinality, twin): it is ambiguous"


def test_config_is_read_off_the_shapes(generator):
    with torch.device("meta"):
        config_f = FAMILY.build({"size": 1024, "channel_multiplier": 2}).state_dict()
        narrow = FAMILY.build({"size": 64, "style_dim": 16, "n_mlp": 3, "channels": [24, 24, 16, 16, 8]}).state_dict()
    assert {k: infer_config(config_f)[k] for k in ("size", "style_dim", "n_mlp", "channel_multiplier")} == {
        "size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}  # fmt: skip
    assert infer_config(config_f)["channels"] == [512, 512, 512, 512, 512, 256, 128, 64, 32] == list(standard_channels(1024, 2))
    found = infer_config(narrow)
    assert (found["size"], found["style_dim"], found["n_mlp"], found["channel_multiplier"], found["channels"]) == (
        64,
        16,
        3,
        None,
        [24, 24, 16, 16, 8],
    )
    assert infer_config(generator.state_dict())["noise"] is True


def test_a_file_without_noise_buffers_gets_zero_noise_in_the_export(generator, files):
    loaded = _load(files[0] / "no_noise.pt")
    assert loaded.config["noise"] is False and not hasattr(loaded.module, "noises")
    with torch.no_grad():
        assert not torch.equal(loaded.module(_z(2)), loaded.module(_z(2)))  # upstream draws noise when the file has none
    torch.manual_seed(1)  # the export of such a file, on an 8 px one (cheaper to capture)
    tiny = randomize(FAMILY.build({"size": 8, "style_dim": 8, "n_mlp": 1, "channels": [4, 4], "noise": False}), seed=2)
    z = torch.randn(2, 8)
    form = make_exportable(tiny, (z,))
    notes = [note.note for note in rewrite_report(form).notes if note.rule == GRAPH_RULES["noise"]]
    assert len(notes) == 3 and all("the export adds zero noise" in n for n in notes)
    for conv in [tiny.conv1, *tiny.convs]:
        conv.noise.weight.data.zero_()  # zero noise strength == zero noise
    with torch.no_grad():
        assert relative_l2(form(z), tiny(z)) < 1e-5


# -- the command line ---------------------------------------------------------------------------------


def test_cli_exports_psp_decoder_on_w_plus_with_psi_input(generator, files, tmp_path, capfd):
    d, avg = files
    assert main([str(d / "psp.pt"), str(tmp_path / "w.onnx"), "--latent", "w", "--truncation", "input", "--providers", "cpu"]) == 0
    out = capfd.readouterr().out
    assert "state_dict at 'state_dict' under 'decoder.' (RosinalityGenerator, family 'rosinality'" in out
    assert "inputs: ws=1x8x32, truncation_psi=1" in out and "PASSED: 6 rows passed" in out
    declared = json.loads(read_properties(tmp_path / "w.onnx")["modconv_export.inputs"])
    assert list(declared) == ["ws", "truncation_psi"]  # what this file takes, not every input the family knows
    session = ort.InferenceSession(str(tmp_path / "w.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ws", "truncation_psi"] and session.get_outputs()[0].name == "image"
    ws, psi = torch.randn(3, 8, 32, generator=torch.Generator().manual_seed(9)), torch.tensor([0.5, 0.8, 1.0])
    (image,) = session.run(None, {"ws": ws.numpy(), "truncation_psi": psi.numpy()})
    with torch.no_grad():
        expected = generator.synthesize(avg + psi.view(3, 1, 1) * (ws - avg))
    assert np.isfinite(image).all() and relative_l2(image, expected) <= 1e-5


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("train", ["--truncation", "0.5"], "holds no latent_avg"),
        ("train", ["--network", "d"], "state_dict at 'd' matches no known model family"),
        ("train", ["--network", "x"], "--network x: no network of that name (its networks: g, d, g_ema)"),
        ("psp", ["--state-dict-key", "state_dict.encoder"], "state_dict at 'state_dict' under 'encoder.' matches no known model family"),
        ("psp", ["--state-dict-key", "opts.x"], "--state-dict-key opts.x: no entry 'x' at 'opts'"),
        ("converted", ["--network", "g_ema", "--state-dict-key", "g_ema"], "--network and --state-dict-key both say what to load"),
    ],
)
def test_cli_refuses_in_one_line(files, tmp_path, capfd, name, options, message):
    assert main([str(files[0] / f"{name}.pt"), str(tmp_path / "x.onnx"), *options]) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR) and message in lines[0], captured.err
    assert not list(tmp_path.iterdir())
