"""Which state_dict of a data file is loaded: the file's default, ``--network``, ``--state-dict-key`` (dotted through
dicts, then a key prefix), or the one model of a known family under a key prefix; two candidates are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modconv_export.errors import LoadError
from modconv_export.families import get_family
from modconv_export.load.selection import select_state_dict, with_family

PATH = Path("f.pt")


@pytest.fixture(scope="module")
def state():
    family = get_family("rosinality")
    with torch.device("meta"):  # names and shapes are all that selection reads
        return family.build(family.preset("small")).state_dict()


def _under(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _pick(obj, **options):
    return with_family(select_state_dict(obj, PATH, **options), PATH)


def test_where_each_layout_keeps_its_generator(state):
    other = {"body.0.weight": torch.zeros(2, 2)}
    cases = [
        (state, {}, [], ""),
        (_under("module.", state), {}, [], "module."),  # DataParallel
        ({"g": state, "g_ema": state, "d": other}, {}, ["g_ema"], ""),  # the file's default before the others
        ({"g": state, "g_ema": state}, {"network": "g"}, ["g"], ""),
        ({"G_running": state, "D": other}, {}, ["G_running"], ""),  # the only model among unnamed entries
        ({"state_dict": {**other, **_under("decoder.", state)}}, {}, ["state_dict"], "decoder."),  # pSp / e4e
        ({"state_dict": {**other, **_under("decoder.", state)}}, {"network": "decoder"}, ["state_dict"], "decoder."),
        ({"ema.model": {"net": _under("g.", state)}}, {"key": "ema.model.net.g"}, ["ema.model", "net"], "g."),  # keys with dots
    ]
    for obj, options, route, prefix in cases:
        picked = _pick(obj, **options)
        assert (picked.route, picked.prefix, picked.family.name) == (route, prefix, "rosinality"), (options, route)
        assert set(picked.state) == set(state)


def test_extras_come_from_the_innermost_dict_that_holds_them(state):
    outer, inner = torch.zeros(32), torch.ones(32)
    picked = _pick({"latent_avg": outer, "run": {"latent_avg": inner, "g_ema": state}}, key="run.g_ema")
    assert picked.extras(("latent_avg",))["latent_avg"] is inner
    assert _pick({"latent_avg": outer, "g_ema": state}).extras(("latent_avg", "other")) == {"latent_avg": outer}


def test_two_candidates_are_refused_with_the_choices(state):
    cases = [
        ({"G": state, "G2": state}, "holds 2 models (rosinality at 'G', rosinality at 'G2'): choose one with --state-dict-key G"),
        (_under("net.0.", state) | _under("net.1.", state),
         "holds 2 models (rosinality under 'net.0.', rosinality under 'net.1.'): choose one with --state-dict-key net.0"),
        ({"state_dict": _under("decoder.", state) | _under("decoder_ema.", state)},
         "(rosinality at 'state_dict' under 'decoder.', rosinality at 'state_dict' under 'decoder_ema.'): choose one with --state-dict-key state_dict.decoder"),
    ]  # fmt: skip
    for obj, message in cases:
        with pytest.raises(LoadError) as info:
            _pick(obj)
        assert message in str(info.value)


def test_options_that_name_nothing(state):
    cases = [
        ({"g_ema": state}, {"key": "g"}, "--state-dict-key g: no entry 'g' (it holds a dict with keys 'g_ema')"),
        (
            {"g_ema": state},
            {"key": "g_ema.conv9"},
            "--state-dict-key g_ema.conv9: no keys start with 'conv9.' in the state_dict at 'g_ema'",
        ),
        ({"g_ema": state, "step": 3}, {"network": "step"}, "--network step: holds an int, not a state_dict (names to tensors)"),
        (state, {"network": "g"}, "--network g: no network of that name (no entry and no key prefix of that name)"),
        ([state], {}, "holds a list, not a model, a state_dict or a modconv-export checkpoint"),
    ]
    for obj, options, message in cases:
        with pytest.raises(LoadError) as info:
            _pick(obj, **options)
        assert str(info.value) == f"{PATH}: {message}", options
