"""Model families: recognition, config inference, strict loading, the LATS age code, ONNX parity.

Table-driven: every registered family must have a row in CASES (a new family without tests fails).
Models are small presets with every parameter randomised (biases included) and are exported once
per module; ONNX Runtime runs on CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from modconv_export import export_onnx
from modconv_export.families import UnknownFamilyError, get_family, recognize, registered_families
from modconv_export.families.lats import LATSConfig, age_code
from modconv_export.load.checkpoint import load_checkpoint, save_checkpoint

from helpers import randomize, relative_l2

# family -> (config keys that shapes cannot reveal, a key whose removal must break strict loading)
CASES = {
    "lats": ({"image_size", "num_classes"}, "age_encoder.encoder.1.conv.weight_orig"),
    "decoder": (set(), "blocks.2.conv1.bias"),
    "gfpgan": ({"input_is_latent"}, "condition_shift.0.2.bias"),  # more in test_stylegan2_rules_family.py
    "rosinality": (set(), "convs.1.noise.weight"),  # more in test_rosinality.py
}
PRESETS = [(name, preset) for name in CASES for preset in ("small", "full")]


def test_every_family_has_a_case():
    assert {f.name for f in registered_families()} == set(CASES)


def _model(name: str, preset: str = "small", seed: int = 0):
    family = get_family(name)
    config = family.preset(preset)
    torch.manual_seed(seed)
    return family, config, randomize(family.build(config), seed=seed)


@pytest.mark.parametrize("name,preset", PRESETS)
def test_recognize_and_infer_config(name, preset):
    family = get_family(name)
    config = family.preset(preset)
    with torch.device("meta"):  # only key names and shapes matter here: no memory, no time
        state = family.build(config).state_dict()
    assert recognize(state) is family
    inferred = family.infer_config(state)
    hints, _ = CASES[name]
    assert {k: v for k, v in inferred.items() if k not in hints} == {k: v for k, v in config.items() if k not in hints}


@pytest.mark.parametrize("name", CASES)
def test_load_is_strict_and_exact(name):
    family, config, model = _model(name, seed=3)
    state = model.state_dict()
    loaded = family.load(state)  # config inferred from shapes
    args = [spec.example(seed=4) for spec in family.inputs(config)]
    with torch.no_grad():
        assert torch.equal(loaded(*args), model(*args))
    _, missing = CASES[name]
    partial = {k: v for k, v in state.items() if k != missing}
    assert recognize(partial) is family  # recognised, then refused by name
    with pytest.raises(RuntimeError, match=f"Missing key.*{missing}"):
        family.load(partial)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        family.load({**state, "extra.weight": torch.zeros(1)}, config)


def test_wrong_config_does_not_load():
    family, config, model = _model("lats")
    with pytest.raises(RuntimeError, match="size mismatch"):
        family.load(model.state_dict(), {**config, "ngf": 16})
    with pytest.raises(ValueError, match="unknown LATS config keys: width"):
        family.build({"width": 3})


def test_unknown_state_dict_lists_families():
    with pytest.raises(UnknownFamilyError) as info:
        recognize({"features.0.weight": torch.zeros(4, 3, 3, 3)})
    assert "lats" in str(info.value) and "decoder" in str(info.value)


def test_infer_config_explains_unsupported_lats_variant():
    _, _, model = _model("lats")
    state = {k.replace("mlp_class_std.0.", "mlp_class_std."): v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="normalize_mlp"):
        get_family("lats").infer_config(state)


def test_toolkit_checkpoint_round_trip(tmp_path):
    family, config, model = _model("decoder")
    path = save_checkpoint(tmp_path / "d.pt", family.name, config, model.state_dict())
    ckpt = load_checkpoint(path)
    assert ckpt.config == config and get_family(ckpt.family) is family
    latent = family.inputs(config)[0].example((2, 64), seed=1)
    with torch.no_grad():
        assert torch.equal(family.load(ckpt.state_dict, ckpt.config)(latent), model(latent))


# -- the LATS age code -------------------------------------------------------------------------------


def _lats_reference_code(classes, noise, seed):
    """LATS get_conditions: each row = noise * randn(1, 300) drawn in row order, then += 1 on its block."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for cls in classes:
        row = noise * torch.randn(1, 300, generator=gen)
        row[0, cls * 50 : (cls + 1) * 50] += 1
        rows.append(row)
    return torch.cat(rows)


def test_age_code_without_noise_is_one_block_of_ones():
    code = age_code(4, batch=2, noise=0)
    assert code.shape == (2, 300)
    expected = torch.zeros(2, 300)
    expected[:, 200:250] = 1
    assert torch.equal(code, expected)


def test_age_code_with_noise_matches_lats_and_is_seeded():
    code = age_code([0, 5, 2], noise=0.2, seed=11)
    assert torch.equal(code, _lats_reference_code([0, 5, 2], 0.2, 11))
    assert torch.equal(code, age_code([0, 5, 2], seed=11))  # 0.2 is the default, as in LATS
    assert not torch.equal(code, age_code([0, 5, 2], seed=12))
    block = code[1, 250:300] - 1
    assert 0.1 < float(block.std()) < 0.3 and abs(float(code[1, :250].mean())) < 0.05


def test_age_code_rejects_bad_classes():
    with pytest.raises(ValueError, match="0..5"):
        age_code(6)
    with pytest.raises(ValueError, match="batch of 3"):
        age_code([1, 2], batch=3)


def test_lats_example_inputs():
    specs = get_family("lats").inputs(get_family("lats").preset("small"))
    assert [(s.name, s.shape) for s in specs] == [("image", (1, 3, 64, 64)), ("target_age", (1, 300))]
    image, code = specs[0].example((2, 3, 32, 32), seed=0), specs[1].example((7, 300), seed=0)
    assert image.shape == (2, 3, 32, 32) and -1 <= float(image.min()) and float(image.max()) <= 1
    assert [int(row.reshape(6, 50).mean(1).argmax()) for row in code] == [0, 1, 2, 3, 4, 5, 0]
    with pytest.raises(ValueError, match="batch, 300"):
        specs[1].example((2, 299))
    assert LATSConfig.from_mapping(get_family("lats").preset("small")).dim_per_class == 50


# -- export + ONNX Runtime parity ------------------------------------------------------------------------

# The decoder also goes through the legacy exporter in test_samples.py.
EXPORTS = [("lats", "torchscript"), ("decoder", "dynamo")]


@pytest.fixture(scope="module", params=EXPORTS, ids=[f"{n}-{e}" for n, e in EXPORTS])
def exported(request, tmp_path_factory):
    name, exporter = request.param
    family, config, model = _model(name, seed=7)
    args = tuple(spec.example(seed=8) for spec in family.inputs(config))
    path = tmp_path_factory.mktemp(name) / f"{name}-{exporter}.onnx"
    export_onnx(model, args, path, exporter=exporter, output_names=list(family.outputs))
    return family, config, model, path


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_eager(exported, batch):
    family, config, model, path = exported
    specs = family.inputs(config)
    feeds = {s.name: s.example((batch, *s.shape[1:]), seed=20 + batch) for s in specs}
    with torch.no_grad():
        expected = model(*feeds.values()).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    assert actual.shape == expected.shape
    assert float(np.abs(expected).max()) < 0.999 and float(expected.std()) > 0.05  # a non-degenerate picture
    assert relative_l2(actual, expected) <= 1e-4


def test_onnx_signature(exported):
    family, config, _, path = exported
    graph = onnx.load(str(path)).graph
    names_in = [i.name for i in graph.input]
    assert names_in == [s.name for s in family.inputs(config)]
    assert [o.name for o in graph.output] == list(family.outputs)
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{value.name}: batch axis is not symbolic"
    for value in graph.input:  # (the legacy exporter leaves the outputs' spatial dims unnamed-symbolic)
        assert all(d.dim_value > 0 for d in value.type.tensor_type.shape.dim[1:]), f"{value.name}: only the batch axis is dynamic"
