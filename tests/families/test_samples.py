"""samples/: make the small checkpoints, export them, deploy them in ONNX Runtime -- as a user would.

The scripts run in subprocesses; the export runs here through :func:`modconv_export.export_onnx`.
The deploy script saves its inputs and output, so the test checks them against the eager model and
checks that the PNG holds exactly those pictures.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from modconv_export import export_onnx
from modconv_export.families import get_family
from modconv_export.families.lats import age_code
from modconv_export.load.checkpoint import load_checkpoint

from helpers import ROOT, relative_l2

SAMPLES = ROOT / "samples"
SIZE = 64  # the small presets' resolution


def run(*args: str | Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deploy_module():
    return _script("deploy_onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``{family: (checkpoint, model, onnx path)}`` for the small samples, exported with the legacy exporter."""
    out = tmp_path_factory.mktemp("samples")
    proc = run(SAMPLES / "make_samples.py", "--out", out, "--size", "small", "--family", "all")
    assert proc.stdout.count("wrote ") == 2
    result = {}
    for name in ("lats", "decoder"):
        ckpt = load_checkpoint(out / f"{name}_small.pt")
        family = get_family(ckpt.family)
        assert family.name == name and ckpt.config == family.preset("small")
        model = family.load(ckpt.state_dict, ckpt.config)
        args = tuple(spec.example(seed=0) for spec in family.inputs(ckpt.config))
        path = export_onnx(model, args, out / f"{name}.onnx", exporter="torchscript", output_names=list(family.outputs))
        result[name] = (ckpt, model, path)
    return result


def test_samples_are_seeded_and_not_saturated(exported):
    config, again = _script("make_samples").make_sample("decoder", "small", seed=0)
    first = exported["decoder"][0].state_dict
    assert config == exported["decoder"][0].config
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    for ckpt, model, _ in exported.values():
        args = [spec.example((4, *spec.shape[1:]), seed=3) for spec in get_family(ckpt.family).inputs(ckpt.config)]
        with torch.no_grad():
            out = model(*args)
        assert float((out.abs() > 0.99).float().mean()) < 0.05 and float(out.std()) > 0.1, ckpt.family


def _tiles(png: Path, count: int, columns: int, deploy) -> np.ndarray:
    """The tiles of a grid, at the model's own resolution, after checking each has a label above it."""
    canvas = np.asarray(Image.open(png).convert("RGB"))
    k = -(-deploy.TILE_MIN // SIZE)
    side, band, rows = SIZE * k, deploy.LABEL, -(-count // columns)
    assert canvas.shape == (rows * (band + side + 2) - 2, columns * (side + 2) - 2, 3)
    places = [(r * (band + side + 2), c * (side + 2)) for r, c in (divmod(i, columns) for i in range(count))]
    assert all(canvas[y : y + band, x : x + side].min() < 100 for y, x in places), "a tile without a label"
    return np.stack([canvas[y + band : y + band + side : k, x : x + side : k] for y, x in places]).astype(np.int16)


def _as_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip((images + 1) * 127.5, 0, 255)).astype(np.int16).transpose(0, 2, 3, 1)


def test_deploy_lats_grid(exported, tmp_path, deploy_module):
    _, model, path = exported["lats"]
    png, arrays = tmp_path / "lats.png", tmp_path / "lats.npz"
    proc = run(SAMPLES / "deploy_onnxruntime.py", path, "--out", png, "--save-arrays", arrays)
    assert "provider: CPUExecutionProvider" in proc.stdout or "provider: CUDAExecutionProvider" in proc.stdout
    saved = np.load(arrays)
    image, code, output = saved["image"], saved["target_age"], saved["output"]
    assert image.shape == (6, 3, SIZE, SIZE) and (image == image[:1]).all()
    assert [int(row.reshape(6, 50).mean(1).argmax()) for row in code] == list(range(6))
    with torch.no_grad():
        expected = model(torch.from_numpy(image), torch.from_numpy(code)).numpy()
    assert relative_l2(output, expected) <= 1e-4
    tiles = _tiles(png, 7, columns=7, deploy=deploy_module)  # the input, then one picture per age class, each labelled
    assert np.abs(tiles - _as_uint8(np.concatenate([image[:1], output]))).max() <= 1


def test_deploy_lats_with_an_image(exported, tmp_path):
    picture = tmp_path / "face.png"
    Image.new("RGB", (90, 120), (200, 100, 50)).save(picture)
    arrays = tmp_path / "a.npz"
    run(SAMPLES / "deploy_onnxruntime.py", exported["lats"][2], "--image", picture, "--out", tmp_path / "g.png", "--save-arrays", arrays)
    saved = np.load(arrays)
    image, output = saved["image"], saved["output"]
    # the picture, normalised as LATS does, is what was fed: every pixel (a flat colour)
    np.testing.assert_allclose(image, np.broadcast_to((np.array([200, 100, 50]) / 127.5 - 1)[None, :, None, None], image.shape), atol=1e-6)
    _, model, _ = exported["lats"]
    with torch.no_grad():
        expected = model(torch.from_numpy(image), torch.from_numpy(saved["target_age"])).numpy()
    assert relative_l2(output, expected) <= 1e-4  # and the output is the model's for that image


def test_deploy_decoder_grid(exported, tmp_path, deploy_module):
    _, model, path = exported["decoder"]
    png, arrays = tmp_path / "decoder.png", tmp_path / "decoder.npz"
    run(SAMPLES / "deploy_onnxruntime.py", path, "--out", png, "--batch", "6", "--save-arrays", arrays)
    saved = np.load(arrays)
    assert saved["latent"].shape == (6, 64)
    with torch.no_grad():
        expected = model(torch.from_numpy(saved["latent"])).numpy()
    assert relative_l2(saved["output"], expected) <= 1e-4
    assert np.abs(_tiles(png, 6, columns=4, deploy=deploy_module)[:6] - _as_uint8(saved["output"])).max() <= 1


def test_deploy_labels_name_the_input_and_each_age_class(deploy_module, tmp_path):
    """The labels are drawn where the tiles say: a grid of blank tiles differs from an unlabelled one only in the bands."""
    tiles = np.full((3, SIZE, SIZE, 3), 255, np.uint8)
    labelled = np.asarray(deploy_module.grid(tiles, 3, ["input", "age 0-2", "age 3-6"]))
    blank = np.asarray(deploy_module.grid(tiles, 3, ["", "", ""]))
    changed = np.argwhere((labelled != blank).any(axis=2))
    assert changed.size and changed[:, 0].max() < deploy_module.LABEL
    assert deploy_module.LATS_AGES == ("0-2", "3-6", "7-9", "15-19", "30-39", "50-69")


def test_deploy_age_codes_match_lats(deploy_module):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(deploy_module.age_codes(300, 0.0, rng), age_code(list(range(6)), noise=0).numpy())
    noisy = deploy_module.age_codes(300, 0.2, rng) - age_code(list(range(6)), noise=0).numpy()
    assert 0.18 < float(noisy.std()) < 0.22


def test_deploy_rejects_an_unknown_graph(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=8), str(path))
    proc = subprocess.run([sys.executable, str(SAMPLES / "deploy_onnxruntime.py"), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "neither LATS" in proc.stderr
