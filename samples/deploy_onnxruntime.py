"""Run an exported generator in ONNX Runtime and write a PNG grid -- no PyTorch needed.

    python samples/deploy_onnxruntime.py OUT.onnx [--out out/grid.png] [--image PATH] [--provider auto|cuda|cpu]

The model kind is read from the graph's input names:

* ``image`` + ``target_age`` (LATS): one image -- ``--image`` or a synthetic one -- rendered at each
  of the 6 age classes in a single batch; the grid is the input followed by the 6 outputs, each labelled
  ("input", then the age group: "0-2", "3-6", ..., "50-69").
* ``latent`` (the styled decoder): a batch of seeded random latents; the grid shows the batch, each
  labelled with its latent's index.

The grid goes to ``out/grid.png`` by default (``out/`` is ignored by git, beside the exported files).

``auto`` uses CUDA when ONNX Runtime's CUDA provider actually starts (``session.get_providers()``;
an installed onnxruntime-gpu without a GPU or CUDA libraries silently runs on CPU), else the CPU,
and says which. Only numpy, onnxruntime and Pillow are imported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

LATS_AGES = ("0-2", "3-6", "7-9", "15-19", "30-39", "50-69")  # LATS's age classes, in target_age order
LATS_CLASSES = len(LATS_AGES)
LABEL = 14  # height of the label band above each tile
TILE_MIN = 96  # smaller outputs are enlarged (by an integer factor) to at least this, so a label fits above each


def open_session(path: Path, provider: str) -> ort.InferenceSession:
    """A session on CUDA if asked/available and it really starts, else on CPU; prints the choice."""
    want_cuda = provider == "cuda" or (provider == "auto" and "CUDAExecutionProvider" in ort.get_available_providers())
    if want_cuda:
        ort.set_default_logger_severity(4)  # a failed CUDA load logs an error before falling back
        try:
            session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        finally:
            ort.set_default_logger_severity(2)
        if session.get_providers()[0] == "CUDAExecutionProvider":
            print("ONNX Runtime provider: CUDAExecutionProvider")
            return session
        if provider == "cuda":
            raise SystemExit("error: the CUDA provider is not active here (no GPU or CUDA libraries); use --provider cpu")
        print("ONNX Runtime provider: CPUExecutionProvider (CUDA provider installed but not active)")
    else:
        print("ONNX Runtime provider: CPUExecutionProvider")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def static_dim(value, name: str, default: int | None = None) -> int:
    if isinstance(value, int) and value > 0:
        return value
    if default is None:
        raise SystemExit(f"error: input dimension {name} is symbolic ({value!r}); this script needs it fixed")
    return default


def synthetic_image(height: int, width: int) -> np.ndarray:
    """A smooth face-like test picture in [-1, 1], [3, H, W]: a lit ellipse on a graded background."""
    y, x = np.mgrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    face = np.clip(1.2 - np.hypot(x / 0.62, (y + 0.05) / 0.82), 0, 1) ** 0.5
    eyes = np.exp(-(((np.abs(x) - 0.25) / 0.08) ** 2 + ((y + 0.15) / 0.05) ** 2))
    light = 0.5 + 0.5 * np.clip(-0.6 * x - 0.4 * y, -1, 1)
    rgb = [0.25 + 0.6 * face * light, 0.3 + 0.45 * face * light, 0.45 + 0.3 * face * light - 0.2 * face]
    img = np.stack(rgb) * (1 - 0.8 * eyes)
    return (np.clip(img, 0, 1) * 2 - 1).astype(np.float32)


def load_image(path: Path, height: int, width: int) -> np.ndarray:
    """Centre-crop to the model's aspect, resize, RGB in [-1, 1] as LATS normalises its inputs."""
    img = Image.open(path).convert("RGB")
    scale = min(img.width / width, img.height / height)
    cw, ch = round(width * scale), round(height * scale)
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    img = img.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
    return (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1).astype(np.float32)


def age_codes(style_dim: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """LATS target-age codes for classes 0..5: noise * N(0, 1) plus ones on each class's block."""
    per_class = style_dim // LATS_CLASSES
    codes = (noise * rng.standard_normal((LATS_CLASSES, style_dim))).astype(np.float32)
    for cls in range(LATS_CLASSES):
        codes[cls, cls * per_class : (cls + 1) * per_class] += 1
    return codes


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8."""
    return (np.clip((images + 1) * 127.5, 0, 255) + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def grid(tiles: np.ndarray, columns: int, labels: list[str], gap: int = 2) -> Image.Image:
    """The tiles in rows of ``columns``, each under its label (enlarged to ``TILE_MIN`` px, nearest: the pixels
    stay what the model produced)."""
    from PIL import ImageDraw

    n, h, w, _ = tiles.shape
    k = max(1, -(-TILE_MIN // max(h, w)))
    tiles = tiles.repeat(k, axis=1).repeat(k, axis=2)
    h, w = h * k, w * k
    rows = -(-n // columns)
    canvas = np.full((rows * (LABEL + h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        top = r * (LABEL + h + gap) + LABEL
        canvas[top : top + h, c * (w + gap) : c * (w + gap) + w] = tile
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for i, label in enumerate(labels):
        r, c = divmod(i, columns)
        draw.text((c * (w + gap) + 2, r * (LABEL + h + gap) + 1), label, fill=(0, 0, 0))
    return picture


def run_lats(specs, args, rng):
    _, _, h, w = specs["image"].shape
    h, w = static_dim(h, "image height", 256), static_dim(w, "image width", 256)
    style_dim = static_dim(specs["target_age"].shape[1], "target_age width")
    image = load_image(args.image, h, w) if args.image else synthetic_image(h, w)
    feeds = {"image": np.repeat(image[None], LATS_CLASSES, axis=0), "target_age": age_codes(style_dim, args.noise, rng)}
    labels = ["input", *(f"age {age}" for age in LATS_AGES)]
    return feeds, lambda out: grid(to_uint8(np.concatenate([image[None], out])), columns=1 + LATS_CLASSES, labels=labels)


def run_decoder(specs, args, rng):
    latent_dim = static_dim(specs["latent"].shape[1], "latent width")
    feeds = {"latent": rng.standard_normal((args.batch, latent_dim)).astype(np.float32)}
    return feeds, lambda out: grid(to_uint8(out), columns=min(args.batch, 4), labels=[f"latent #{i}" for i in range(len(out))])


KINDS = {frozenset({"image", "target_age"}): ("LATS", run_lats), frozenset({"latent"}): ("decoder", run_decoder)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX file written by modconv-export")
    parser.add_argument("--out", type=Path, default=Path("out/grid.png"), help="PNG to write (default out/grid.png)")
    parser.add_argument("--image", type=Path, help="LATS: input picture (default: a synthetic test image)")
    parser.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--batch", type=int, default=8, help="decoder: number of latents (default 8)")
    parser.add_argument("--noise", type=float, default=0.2, help="LATS: age-code noise std (LATS default 0.2; 0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-arrays", type=Path, help="also save the inputs and output to this .npz")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no such ONNX file: {args.model}")

    session = open_session(args.model, args.provider)
    specs = {i.name: i for i in session.get_inputs()}
    kind = KINDS.get(frozenset(specs))
    if kind is None:
        parser.error(f"inputs {sorted(specs)} are neither LATS (image, target_age) nor decoder (latent)")
    name, prepare = kind
    feeds, make_grid = prepare(specs, args, np.random.default_rng(args.seed))
    start = time.perf_counter()
    output = session.run(None, feeds)[0]
    elapsed = time.perf_counter() - start
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    print(f"{name}: {shapes} -> output {list(output.shape)} in {elapsed * 1000:.0f} ms, range [{output.min():.2f}, {output.max():.2f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(output).save(args.out)
    if args.save_arrays:
        np.savez(args.save_arrays, output=output, **feeds)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
