"""The report picture: reference | backend output | |difference| heat map, a few samples per image output.

People look at pictures before tables: a wrong colour order, a shifted pixel grid or a blotch of NaN
is obvious here and cryptic in a number. Each block is captioned with the row's numbers. Pillow is an
optional extra (``pip install 'modconv-export[image]'``), imported only when a picture is drawn.
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

__all__ = ["MissingExtraError", "report_image_size", "write_report_image"]

TILE = 128  #: minimum tile side in pixels; small images are enlarged by an integer factor (nearest)
MIN_WIDTH = 480  #: room for the captions
PAD = 8  #: gap between tiles and around the picture
LINE = 14  #: height of one text line
CAPTION_LINES = 2  #: caption lines above each output block
#: Heat map from black through red and yellow to white, for |difference| scaled to its maximum.
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
    """``(width, height)`` of the picture for ``samples``: three tiles per sample row, one block per output."""
    width, height = MIN_WIDTH, PAD
    for s in samples:
        h, w = s.expected.shape[2:]
        k = _scale(h, w)
        width = max(width, 3 * w * k + 4 * PAD)
        height += CAPTION_LINES * LINE + len(s.expected) * (h * k + LINE + PAD) + PAD
    return width, height


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
    first = f"{r.status.upper()} | output {s.output} | {s.backend} against {s.reference} | batch {s.batch} | {r.precision}"
    numbers = [f"rel-L2 {r.rel_l2:.2e}" + (f" (limit {r.rel_l2_limit:.0e})" if r.rel_l2_limit is not None else "")]
    if r.max_abs is not None:
        numbers.append(f"max-abs {r.max_abs:.2e}")
    if r.psnr is not None:
        numbers.append(f"PSNR {r.psnr:.1f} dB")
    if r.nan_count or r.inf_count:
        numbers.append(f"NaN {r.nan_count} Inf {r.inf_count}")
    return [first, " | ".join(numbers)]


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
    y = PAD
    for s in samples:
        for line in _caption(s):
            draw.text((PAD, y), line, fill=(0, 0, 0), font=font)
            y += LINE
        expected, actual = s.expected.astype(np.float64), s.actual.astype(np.float64)
        finite = expected[np.isfinite(expected)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        h, w = expected.shape[2:]
        k = _scale(h, w)
        for n in range(len(expected)):
            diff = np.abs(actual[n] - expected[n]).max(axis=0)
            top = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
            tiles = [_to_rgb(expected[n], low, high), _to_rgb(actual[n], low, high), _heat(diff, top)]
            labels = [f"reference #{n}", s.backend, f"|diff| 0..{top:.1e}"]
            for col, (tile, label) in enumerate(zip(tiles, labels)):
                x = PAD + col * (w * k + PAD)
                draw.text((x, y), label, fill=(60, 60, 60), font=font)
                canvas.paste(Image.fromarray(tile).resize((w * k, h * k), Image.NEAREST), (x, y + LINE))
            y += LINE + h * k + PAD
        y += PAD
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    with atomic_output(path) as tmp:
        write_bytes(tmp, buffer.getvalue())
    return Path(path)
