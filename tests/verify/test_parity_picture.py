"""The report picture: a real PNG of the documented layout whose tiles show the data, and a clear error without Pillow."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from modconv_export.verify import ImageSample, MissingExtraError, ParityRow, write_report_image
from modconv_export.verify.picture import LINE, PAD, TILE, report_image_size

PIL = pytest.importorskip("PIL.Image")


def sample(actual_offset: float = 0.0, n: int = 3, size: int = 8) -> ImageSample:
    gen = torch.Generator().manual_seed(0)
    expected = torch.rand(n, 3, size, size, generator=gen).numpy() * 2 - 1
    actual = expected + actual_offset
    row = ParityRow("ort-cpu", "pass", 3, "image", "rel-L2 0.0e+00 ≤ 1e-04", rel_l2=0.0, max_abs=0.0, psnr=float("inf"), rel_l2_limit=1e-4)
    return ImageSample("image", "ort-cpu", "eager-original-cpu", 3, expected, actual, row)


def test_picture_is_a_png_of_the_expected_size(tmp_path):
    path = write_report_image(sample(), tmp_path / "parity.png")
    with PIL.open(path) as image:
        assert image.format == "PNG"
        # 8x8 images are enlarged 16x to 128 px tiles; 3 tiles wide (min width 480), 3 samples high
        assert image.size == (480, 8 + 2 * 14 + 3 * (128 + 14 + 8) + 8) == report_image_size([sample()])
        pixels = np.asarray(image.convert("RGB")).astype(int)
    top = PAD + 2 * LINE + LINE  # first sample's tiles start below the caption and the tile label
    reference = pixels[top : top + TILE, PAD : PAD + TILE]
    output = pixels[top : top + TILE, 2 * PAD + TILE : 2 * PAD + 2 * TILE]
    heat = pixels[top : top + TILE, 3 * PAD + 2 * TILE : 3 * PAD + 3 * TILE]
    assert reference.std() > 10  # the image is drawn, not blank
    assert np.array_equal(reference, output)  # equal outputs look equal
    assert heat.max() == 0  # and their difference is black


def test_difference_shows_in_the_heat_map(tmp_path):
    s = sample()
    s.actual = s.expected.copy()
    s.actual[0, :, 2, 3] += 0.5  # one wrong pixel in sample 0
    path = write_report_image([s], tmp_path / "diff.png")
    pixels = np.asarray(PIL.open(path).convert("RGB")).astype(int)
    top, left, k = PAD + 3 * LINE, 3 * PAD + 2 * TILE, TILE // 8
    heat = pixels[top : top + TILE, left : left + TILE]
    assert heat[2 * k + k // 2, 3 * k + k // 2].tolist() == [255, 255, 255]  # the hottest pixel is white
    assert heat[0:k, 0:k].max() == 0


def test_report_from_check_parity_draws(tmp_path):
    from modconv_export.layers.seed import ModulatedConv2d
    from modconv_export.verify import check_parity

    torch.manual_seed(0)
    model = ModulatedConv2d(3, 3, 3, latent_dim=4).eval()
    report = check_parity(model, (torch.randn(1, 3, 8, 8), torch.randn(1, 4)), providers=("cpu",), batch_sizes=(2,))
    assert [(s.backend, s.expected.shape) for s in report.images] == [("eager-cpu", (2, 3, 8, 8))]
    with PIL.open(write_report_image(report, tmp_path / "r.png")) as image:
        assert image.size == report_image_size(report.images)


def test_missing_pillow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'modconv-export\[image\]'"):
        write_report_image(sample(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
