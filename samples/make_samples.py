"""Write toolkit checkpoints with seeded random weights for the bundled model families.

    python samples/make_samples.py [--out DIR] [--size small|full] [--family lats|decoder|all] [--seed N]

writes ``DIR/<family>_<size>.pt`` (default ``samples/out/``), e.g. ``samples/out/lats_small.pt``,
loadable by ``modconv-export`` and :func:`modconv_export.load.checkpoint.load_checkpoint`.

Random weights give noise-like pictures, but they exercise every layer exactly as trained ones
would. The last layer before the tanh is rescaled so its output has RMS ~0.7 on example inputs:
pictures then span the output range without saturating at +-1, which a raw random init would do
for the full-size decoder. ``small`` is a narrow 64x64 configuration for tests and the README;
``full`` is LATS's released architecture (256x256) and the decoder's 256x256 default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

from modconv_export.families import get_family
from modconv_export.load.checkpoint import save_checkpoint

FAMILIES = ("lats", "decoder")
SIZES = ("small", "full")
TARGET_RMS = 0.7
DEFAULT_OUT = Path(__file__).resolve().parent / "out"

#: Per family: the module path of the layer feeding the tanh and its weight parameter (output is linear in it).
OUTPUT_LAYER = {"lats": ("decoder.conv_img.0.conv", "weight_orig"), "decoder": ("to_rgb", "weight")}


def calibrate_output(model: nn.Module, family: str, config: dict, seed: int) -> float:
    """Scale the pre-tanh layer's weight so its output RMS is ``TARGET_RMS``; returns the factor used."""
    path, param = OUTPUT_LAYER[family]
    layer = model.get_submodule(path)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        specs = get_family(family).inputs(config)
        args = [spec.example((4, *spec.shape[1:]), seed=seed + i) for i, spec in enumerate(specs)]
        with torch.no_grad():
            model(*args)
    finally:
        handle.remove()
    rms = float(captured[0].pow(2).mean().sqrt())
    factor = TARGET_RMS / rms if rms > 0 else 1.0
    with torch.no_grad():
        getattr(layer, param).mul_(factor)  # the biases are zero, so the output scales by exactly factor
    return factor


def make_sample(family: str, size: str, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a seeded random model of ``family`` at preset ``size``."""
    fam = get_family(family)
    config = fam.preset(size)
    torch.manual_seed(seed)
    model = fam.build(config)
    calibrate_output(model, family, config, seed)
    return config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--family", choices=(*FAMILIES, "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES if args.family == "all" else (args.family,):
        config, state_dict = make_sample(family, args.size, args.seed)
        path = save_checkpoint(args.out / f"{family}_{args.size}.pt", family, config, state_dict)
        count = sum(t.numel() for t in state_dict.values())
        print(f"wrote {path} ({family}, {args.size}, {count / 1e6:.1f}M values, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
