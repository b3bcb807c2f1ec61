"""The ``gfpgan`` family: GFPGAN's released checkpoint layout loads into our key-compatible model,
equals the upstream ``GFPGANv1Clean`` and exports through the StyleGAN2 rules.

Upstream comparisons need the archives (tests/fixtures/stylegan2/upstream.py); the rest runs anywhere.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from modconv_export import export_onnx, rewrite_model
from modconv_export.export.checks import computed_conv_weights
from modconv_export.families import get_family, recognize
from modconv_export.load import load_model

from fixtures.stylegan2 import models
from fixtures.stylegan2.models import perturb
from fixtures.stylegan2.upstream import load_upstream, missing_reason
from helpers import relative_l2

UPSTREAM_MISSING = missing_reason()
needs_upstream = pytest.mark.skipif(UPSTREAM_MISSING is not None, reason=f"upstream archives: {UPSTREAM_MISSING}")
FAMILY = get_family("gfpgan")


def _images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _ort(path, image):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers()[0] == "CPUExecutionProvider"
    return session.run(None, {"image": image.numpy()})[0]


@pytest.mark.parametrize("preset", ["small", "full"])
def test_presets_are_recognized_and_inferred(preset):
    config = FAMILY.preset(preset)
    with torch.device("meta"):
        state = FAMILY.build(config).state_dict()
    assert recognize(state) is FAMILY
    assert FAMILY.infer_config(state) == config


UPSTREAM_CONFIGS = [
    ("v1.3-layout", 32, {}),
    ("no-sft-half-same-w", 32, {"sft_half": False, "different_w": False}),
    ("64px", 64, {"narrow": 1 / 16}),
]


@needs_upstream
@pytest.mark.parametrize("case,size,kw", UPSTREAM_CONFIGS, ids=[c[0] for c in UPSTREAM_CONFIGS])
def test_upstream_state_dict_loads_strictly_and_matches(case, size, kw):
    upstream = models.gfpgan_v1_clean(load_upstream(), seed=1, size=size, **kw)
    state = upstream.state_dict()
    assert recognize(state) is FAMILY
    config = FAMILY.infer_config(state)
    assert (
        config["out_size"] == size
        and config["sft_half"] == kw.get("sft_half", True)
        and config["different_w"] == kw.get("different_w", True)
    )
    ours = FAMILY.load(state)
    image = _images(2, size, seed=2)
    with torch.no_grad():
        assert relative_l2(ours(image), upstream(image, return_rgb=False, randomize_noise=False)[0]) <= 1e-6


@needs_upstream
def test_released_checkpoint_layout_exports_with_parity(tmp_path):
    """``{"params_ema": ..., "params": ...}`` as GFPGANv1.4.pth holds them -> load -> ONNX -> ORT at batch 1 and 3."""
    upstream = models.gfpgan_v1_clean(load_upstream(), seed=3)
    other = models.gfpgan_v1_clean(load_upstream(), seed=4)  # 'params' differ from 'params_ema': the EMA must win
    checkpoint = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": upstream.state_dict(), "params": other.state_dict()}, checkpoint)
    loaded = load_model(checkpoint)
    assert loaded.family is FAMILY and loaded.kind == "state_dict"
    _, report = rewrite_model(loaded.module)
    assert report.near_misses == [] and report.notes == []  # noise is always the stored buffers: nothing random
    assert report.counts() == {"stylegan2_clean_modulated_conv": 11, "style_conv_noise": 7}
    path = export_onnx(loaded.module, (_images(2, 32, seed=5),), tmp_path / "gfpgan.onnx", exporter="torchscript",
                       input_names=["image"], output_names=list(FAMILY.outputs))  # fmt: skip
    assert computed_conv_weights(onnx.load(str(path))) == []
    for batch in (1, 3):
        image = _images(batch, 32, seed=10 + batch)
        with torch.no_grad():
            expected = upstream(image, return_rgb=False, randomize_noise=False)[0].numpy()
        assert relative_l2(_ort(path, image), expected) <= 1e-4


def test_small_preset_exports_with_dynamo(tmp_path):
    torch.manual_seed(0)
    model = perturb(FAMILY.build(FAMILY.preset("small")), seed=6)
    path = export_onnx(model, (_images(2, 32, seed=7),), tmp_path / "small.onnx", input_names=["image"], output_names=["restored"])
    assert computed_conv_weights(onnx.load(str(path))) == []
    for batch in (1, 3):
        image = _images(batch, 32, seed=20 + batch)
        with torch.no_grad():
            assert relative_l2(_ort(path, image), model(image).numpy()) <= 1e-4
