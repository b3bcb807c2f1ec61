"""The report picture: reference | backend output | |difference| heat map, a few samples per image output.

People look at pictures before tables: a wrong colour order, a shifted pixel grid or a blotch of NaN
is obvious here and cryptic in a number. Each block is captioned with the row's numbers and its columns
are labelled; every heat map of the picture uses one scale, 0 to the largest difference anywhere in it,
drawn as a colour bar at the bottom (so the hottest tile is the worst one), and each sample's own largest
difference is written beside it. Pillow is an optional extra (``pip install 'modconv-export[image]'``),
imported only when a picture is drawn.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._util.files import atomic_output, write_bytes
from ..errors import MissingExtraError, ModconvExportError
from .report import ImageSample, ParityReport

__all__ = ["MissingExtraError", "column_labels", "picture_scale", "report_image_size", "write_report_image"]

TILE = 128  #: minimum tile side in pixels; small images are enlarged by an integer factor (nearest)
MIN_WIDTH = 480  #: room for the captions
PAD = 8  #: gap between tiles and around the picture
LINE = 14  #: height of one text line
CAPTION_LINES = 3  #: lines above each output block: two of caption, one of column labels
BAR = 12  #: height of the colour bar
#: Heat map from black through red and yellow to white, for |difference| on the picture's one scale.
_HEAT = np.array([[0, 0, 0], [120, 0, 40], [230, 40, 0], [255, 200, 0], [255, 255, 255]], dtype=np.float64)


def _pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:
        raise MissingExtraError("the report picture needs Pillow: pip install 'modconv-export[image]' (or pip install pillow)") from exc
    return Image, ImageDraw, ImageFont


def _scale(height: int, width: int) -> int:
    return max(1, math.ceil(TILE / max(height, width)))


def report_image_size(samples: Sequence[ImageSample]) -> tuple[int, int]:
    """``(width, height)`` of the picture for ``samples``: three tiles per sample row, one block per output,
    and the colour bar with its labels at the bottom."""
    width, height = MIN_WIDTH, PAD
    for s in samples:
        h, w = s.expected.shape[2:]
        k = _scale(h, w)
        width = max(width, 3 * w * k + 4 * PAD)
        height += CAPTION_LINES * LINE + len(s.expected) * (h * k + LINE + PAD) + PAD
    return width, height + LINE + BAR + LINE + PAD


def _to_rgb(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``[C, H, W]`` (1, 3 or 4 channels) -> ``[H, W, 3]`` uint8, mapping ``low..high`` to 0..255."""
    x = np.nan_to_num(image.astype(np.float64), nan=low, posinf=high, neginf=low)
    x = np.clip((x - low) / (high - low if high > low else 1.0), 0, 1)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    return (x.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def _heat(diff: np.ndarray, top: float) -> np.ndarray:
    """``[H, W]`` non-negative -> ``[H, W, 3]`` uint8 on the heat scale; NaN shows as pure blue."""
    t = np.clip(np.nan_to_num(diff, nan=0.0) / (top if top > 0 else 1.0), 0, 1) * (len(_HEAT) - 1)
    i = np.minimum(t.astype(int), len(_HEAT) - 2)
    f = (t - i)[..., None]
    rgb = _HEAT[i] * (1 - f) + _HEAT[i + 1] * f
    rgb[np.isnan(diff)] = (0, 0, 255)
    return (rgb + 0.5).astype(np.uint8)


def _samples(report_or_data: Any) -> list[ImageSample]:
    if isinstance(report_or_data, ParityReport):
        return list(report_or_data.images)
    if isinstance(report_or_data, ImageSample):
        return [report_or_data]
    if isinstance(report_or_data, (list, tuple)) and all(isinstance(s, ImageSample) for s in report_or_data):
        return list(report_or_data)
    raise TypeError(f"expected a ParityReport, an ImageSample or a list of them, got {type(report_or_data).__name__}")


def _caption(s: ImageSample) -> list[str]:
    r = s.row
    first = f"{r.status.upper()} | graph output '{s.output}' | {s.backend} against {s.reference} | batch {s.batch} | {r.precision}"
    numbers = [f"rel-L2 {r.rel_l2:.2e}" + (f" (limit {r.rel_l2_limit:.0e})" if r.rel_l2_limit is not None else "")]
    if r.max_abs is not None:
        numbers.append(f"max-abs {r.max_abs:.2e}")
    if r.psnr is not None:
        numbers.append(f"PSNR {r.psnr:.1f} dB")
    if r.nan_count or r.inf_count:
        numbers.append(f"NaN {r.nan_count} Inf {r.inf_count}")
    return [first, " | ".join(numbers)]


def column_labels(s: ImageSample) -> list[str]:
    """The labels over a block's three columns (the caption above names the reference)."""
    return ["reference", s.backend, "|difference|"]


def _differences(s: ImageSample) -> np.ndarray:
    """``[n, H, W]``: the largest absolute difference over the channels, per pixel."""
    return np.abs(s.actual.astype(np.float64) - s.expected.astype(np.float64)).max(axis=1)


def picture_scale(samples: Sequence[ImageSample]) -> float:
    """The one heat scale of a picture: the largest finite difference in any of its samples (0 if none)."""
    tops = [float(np.nanmax(d)) for s in samples if np.isfinite(d := _differences(s)).any()]
    return max(tops, default=0.0)


def write_report_image(report_or_data: ParityReport | ImageSample | Sequence[ImageSample], path: str | os.PathLike) -> Path:
    """Draw the reference / output / |difference| grid for every image output and write a PNG to ``path``.

    ``report_or_data`` is a :class:`ParityReport` from :func:`check_parity` (its ``images``: the largest
    batch, a few samples, one exported backend per output -- a failing one if any) or
    :class:`ImageSample` objects. Raises :class:`MissingExtraError` without Pillow and
    :class:`~modconv_export.errors.ModconvExportError` if there is no image output to draw.
    """
    samples = _samples(report_or_data)
    if not samples:
        raise ModconvExportError("no image-like output ([N, 1|3|4, H, W]) ran in this report: nothing to draw")
    Image, ImageDraw, ImageFont = _pillow()
    width, height = report_image_size(samples)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    top = picture_scale(samples)
    y = PAD
    for s in samples:
        h, w = s.expected.shape[2:]
        k = _scale(h, w)
        columns = [PAD + col * (w * k + PAD) for col in range(3)]
        for line in _caption(s):
            draw.text((PAD, y), line, fill=(0, 0, 0), font=font)
            y += LINE
        for x, label in zip(columns, column_labels(s)):
            draw.text((x, y), label, fill=(0, 0, 0), font=font)
        y += LINE
        expected, actual, diffs = s.expected.astype(np.float64), s.actual.astype(np.float64), _differences(s)
        finite = expected[np.isfinite(expected)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for n in range(len(expected)):
            row_top = float(np.nanmax(diffs[n])) if np.isfinite(diffs[n]).any() else 0.0
            tiles = [_to_rgb(expected[n], low, high), _to_rgb(actual[n], low, high), _heat(diffs[n], top)]
            labels = [f"sample #{n}", f"sample #{n}", f"max {row_top:.1e}"]
            for x, tile, label in zip(columns, tiles, labels):
                draw.text((x, y), label, fill=(90, 90, 90), font=font)
                canvas.paste(Image.fromarray(tile).resize((w * k, h * k), Image.NEAREST), (x, y + LINE))
            y += LINE + h * k + PAD
        y += PAD
    _colour_bar(canvas, draw, font, y, top)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    with atomic_output(path) as tmp:
        write_bytes(tmp, buffer.getvalue())
    return Path(path)


def _colour_bar(canvas: Any, draw: Any, font: Any, y: int, top: float) -> None:
    """The picture's heat scale, 0 to ``top``, across the picture's width below the last block."""
    from PIL import Image

    draw.text((PAD, y), "|difference|: one scale for every heat map above (blue: NaN)", fill=(0, 0, 0), font=font)
    length = canvas.width - 2 * PAD
    ramp = _heat(np.tile(np.linspace(0.0, top if top > 0 else 1.0, length), (BAR, 1)), top)
    canvas.paste(Image.fromarray(ramp), (PAD, y + LINE))
    label = f"{top:.1e}"
    draw.text((PAD, y + LINE + BAR), "0", fill=(0, 0, 0), font=font)
    draw.text((canvas.width - PAD - int(draw.textlength(label, font=font)), y + LINE + BAR), label, fill=(0, 0, 0), font=font)
