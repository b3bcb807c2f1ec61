"""The run's example inputs: from the model family, or from ``--input NAME=SHAPE`` checked against
``forward``'s signature; refused before allocation when this machine cannot hold them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._util import forward_parameters
from .._util.memory import check_fits, is_allocation_failure
from ..errors import OutOfMemory, UsageError
from ..load import LoadedModel
from .arguments import shape_text

__all__ = ["Inputs", "check_memory", "outputs_of", "resolve_inputs", "run_eager"]


@dataclass
class Inputs:
    names: list[str]
    shapes: list[tuple[int, ...]]
    tensors: tuple
    specs: list | None  # InputSpec per input when the family knows them (realistic parity inputs)


def resolve_inputs(loaded: LoadedModel, given: list[tuple[str, tuple[int, ...]]]) -> Inputs:
    names_given = [n for n, _ in given]
    dupes = sorted({n for n in names_given if names_given.count(n) > 1})
    if dupes:
        raise UsageError(f"--input {dupes[0]} is given more than once")
    shapes = dict(given)
    if loaded.inputs:
        known = [s.name for s in loaded.inputs]
        unknown = [n for n in names_given if n not in known]
        if unknown:
            raise UsageError(f"--input {unknown[0]}: this model's inputs are {', '.join(known)}")
        specs = list(loaded.inputs)
        names = known
        dims = [tuple(shapes.get(s.name, s.shape)) for s in specs]
        check_memory(names, dims, [s.dtype.itemsize for s in specs])
        tensors = tuple(s.example(d, seed=i) for i, (s, d) in enumerate(zip(specs, dims)))
        return Inputs(names, dims, tensors, specs)
    params, required, varargs = forward_parameters(loaded.module)
    signature = f"forward({', '.join(params)})"
    if not given:
        example = " ".join(f"--input {p}=SHAPE" for p in required or params) or "--input NAME=SHAPE"
        raise UsageError(f"this model has no known family, so its input shapes are needed: its {signature} takes {example}")
    if not varargs:
        if names_given != params[: len(names_given)]:
            raise UsageError(f"--input names must follow {signature} in order, got {', '.join(names_given)}")
        missing = [p for p in required if p not in names_given]
        if missing:
            raise UsageError(f"missing --input for {', '.join(missing)} ({signature})")
    check_memory(names_given, [s for _, s in given], [4] * len(given))
    gen = torch.Generator().manual_seed(0)
    tensors = tuple(torch.randn(*shape, generator=gen) for _, shape in given)
    return Inputs(names_given, [s for _, s in given], tensors, None)


def check_memory(names: Sequence[str], shapes: Sequence[tuple[int, ...]], itemsizes: Sequence[int]) -> None:
    """Refuse example inputs this machine cannot hold, before allocating them (at the largest batch used)."""
    per_sample = sum(math.prod(s[1:]) * size for s, size in zip(shapes, itemsizes))
    batch = max([3, *(s[0] for s in shapes if s)])  # the exporter traces batch 2, the parity check runs 3
    given = " ".join(f"{n}={shape_text(s)}" for n, s in zip(names, shapes))
    check_fits(per_sample * batch, f"the inputs {given} (at batch {batch}, before any activation)")


def run_eager(module: torch.nn.Module, inputs: Inputs):
    try:
        with torch.no_grad():
            return module(*inputs.tensors)
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        given = " ".join(f"{n}={shape_text(s)}" for n, s in zip(inputs.names, inputs.shapes))
        if is_allocation_failure(exc):
            raise OutOfMemory(f"out of memory running the model on the inputs {given}: {text}") from exc
        raise UsageError(f"the model rejects the inputs {given}: {type(exc).__name__}: {text}") from exc


def outputs_of(result) -> list:
    """The model's outputs as a list; anything but tensors (rosinality's ``(image, None)``) is refused with the fix."""
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        kinds = ", ".join(type(o).__name__ for o in outputs)
        raise UsageError(
            f"the model's forward returns ({kinds}), and an exported graph returns tensors only: export a subclass whose "
            "forward returns the tensors you want (e.g. return super().forward(x)[0]; see --arch in docs/command-line.md)"
        )
    return outputs
