"""The report picture: a real PNG of the documented layout whose tiles show the data on one heat scale, and a
clear error without Pillow."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from modconv_export.verify import ImageSample, MissingExtraError, ParityRow, write_report_image
from modconv_export.verify.picture import _HEAT, BAR, LINE, PAD, TILE, column_labels, picture_scale, report_image_size

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
        # 8x8 images are enlarged 16x to 128 px tiles; 3 tiles wide (min width 480), 3 samples high, then the colour bar
        assert image.size == (480, 8 + 3 * 14 + 3 * (128 + 14 + 8) + 8 + 14 + 12 + 14 + 8) == report_image_size([sample()])
        pixels = np.asarray(image.convert("RGB")).astype(int)
    top = PAD + 3 * LINE + LINE  # first sample's tiles: below the caption, the column labels and the sample's label
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
    top, left, k = PAD + 4 * LINE, 3 * PAD + 2 * TILE, TILE // 8
    heat = pixels[top : top + TILE, left : left + TILE]
    assert heat[2 * k + k // 2, 3 * k + k // 2].tolist() == [255, 255, 255]  # the hottest pixel is white
    assert heat[0:k, 0:k].max() == 0


def test_every_heat_map_shares_one_scale_shown_by_the_colour_bar(tmp_path):
    """A small difference must look small next to a large one: one scale for the whole picture, drawn at the bottom."""
    big, small = sample(), sample()
    big.actual = big.expected + 0.2  # every pixel off by 0.2
    small.actual = small.expected + 0.002  # every pixel off by 0.002
    small.output = "other"
    assert picture_scale([big, small]) == pytest.approx(0.2)
    path = write_report_image([big, small], tmp_path / "scale.png")
    pixels = np.asarray(PIL.open(path).convert("RGB")).astype(int)
    block = 3 * LINE + 3 * (LINE + TILE + PAD) + PAD
    left = 3 * PAD + 2 * TILE
    tile = lambda b, n: pixels[PAD + b * block + 3 * LINE + n * (LINE + TILE + PAD) + LINE :][:TILE, left : left + TILE]  # noqa: E731
    assert (tile(0, 0) == [255, 255, 255]).all()  # the largest difference: the top of the scale
    assert tile(1, 0).max() <= 10  # a hundred times smaller: near black on the same scale, not white on its own
    bar_top = PAD + 2 * block + LINE
    bar = pixels[bar_top : bar_top + BAR, PAD:-PAD]
    assert (bar[:, 0] == _HEAT[0]).all() and (bar[:, -1] == _HEAT[-1]).all()  # black at 0, white at the top
    assert bar[0, :, 0].tolist() == sorted(bar[0, :, 0].tolist())  # and red rises along it


def test_captions_and_column_labels_name_what_each_tile_is():
    s = sample()
    from modconv_export.verify.picture import _caption

    first, numbers = _caption(s)
    assert first == "PASS | graph output 'image' | ort-cpu against eager-original-cpu | batch 3 | fp32"
    assert numbers.startswith("rel-L2 0.00e+00 (limit 1e-04)")
    s.output = "output"
    assert "output output" not in _caption(s)[0]
    assert column_labels(s) == ["reference", "ort-cpu", "|difference|"]


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
