"""The LATS family against the upstream implementation -- only when one is available locally.

Set ``MODCONV_UPSTREAM_LATS=/path/to/models/networks.py`` (from royorel/Lifespan_Age_Transformation_Synthesis;
it is not part of this repository). The upstream ``Generator`` is built with LATS's test-time options,
given random weights, and its ``state_dict`` -- what ``latest_net_g_running.pth`` holds -- is loaded
into our family by key recognition and shape inference; ``Generator.infer`` and our model (eager and
exported to ONNX) must agree to relative L2 1e-4 in fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modconv_export import export_onnx
from modconv_export.families import recognize
from modconv_export.families.lats import age_code

from helpers import relative_l2

UPSTREAM = os.environ.get("MODCONV_UPSTREAM_LATS")
pytestmark = pytest.mark.skipif(
    not UPSTREAM or not os.path.isfile(UPSTREAM),
    reason="set MODCONV_UPSTREAM_LATS to an upstream LATS models/networks.py to compare against it",
)


@pytest.fixture(scope="module")
def networks():
    spec = importlib.util.spec_from_file_location("lats_upstream_networks", UPSTREAM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upstream_generator(networks, ngf: int, seed: int):
    """``define_G`` exactly as LATS_model.initialize calls it with the default options, random weights."""
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # define_G prints the network
        net = networks.define_G(
            3, 3, ngf, 2, id_enc_norm="pixel", gpu_ids=[], padding_type="reflect", style_dim=6 * 50,
            init_type="kaiming", conv_weight_norm=True, decoder_norm="pixel", activation="lrelu",
            adaptive_blocks=4, normalize_mlp=True, modulated_conv=True,
        )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.endswith("bias") else 1.0))
    return net.eval()


def _inputs(batch: int, size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    return image, age_code([c % 6 for c in range(batch)], generator=gen)


@pytest.mark.parametrize("ngf,size", [(64, 64), (8, 32)])
def test_eager_equals_upstream(networks, ngf, size):
    upstream = upstream_generator(networks, ngf, seed=ngf)
    state = upstream.state_dict()
    family = recognize(state)
    assert family.name == "lats" and family.infer_config(state)["ngf"] == ngf
    ours = family.load(state)
    image, code = _inputs(3, size, seed=1)
    with torch.no_grad():
        expected = upstream.infer(image, code)
        assert relative_l2(ours(image, code), expected) <= 1e-4
        # deploy mode (one image, every class) is the batch-aligned graph on a repeated image
        deploy = upstream.infer(image[:1], code, deploy=True)
        assert relative_l2(ours(image[:1].repeat(3, 1, 1, 1), code), deploy) <= 1e-4
        assert relative_l2(ours.encode_age(image), upstream.age_encoder(image)) <= 1e-4


def test_onnx_equals_upstream(networks, tmp_path):
    upstream = upstream_generator(networks, 8, seed=5)
    family = recognize(upstream.state_dict())
    ours = family.load(upstream.state_dict())
    path = export_onnx(ours, _inputs(1, 32, seed=2), tmp_path / "lats.onnx", exporter="torchscript", output_names=["output"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        image, code = _inputs(batch, 32, seed=10 + batch)
        with torch.no_grad():
            expected = upstream.infer(image, code).numpy()
        (actual,) = session.run(None, {"image": image.numpy(), "target_age": code.numpy()})
        assert np.isfinite(actual).all() and relative_l2(actual, expected) <= 1e-4
