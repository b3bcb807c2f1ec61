"""What each module receives in the model: the inputs the module rules are proven on.

A rule's replacement must compute what the module computes *as the model uses it*. A slimmable generator
feeds a layer fewer channels than its parameters hold (and the layer slices its bias to match); a probe
built from the parameters' shapes would prove a full-width replacement on inputs the model never gives it.
So, as the graph stage's probe does, the module rules are proven on one forward pass of the whole model:
:func:`record_calls` keeps the arguments each chosen module is called with.

A module that cannot run here at all (a CUDA-only extension on the CPU) would stop that forward pass; where
a rule may replace such a module, its replacement stands in for it during the pass (and the module is
listed in :attr:`Recording.cannot_run`), so that the modules after it are still reached.

:func:`failing_module` finds where a forward pass fails (the innermost module whose call raised), for
errors that name the module a rule changed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from .._util import exception_line

__all__ = ["ModuleCall", "Recording", "failing_module", "is_plain_torch", "record_calls"]

#: Calls kept per module (a module the model calls more often is proven on its first ones).
CALLS_KEPT = 2


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module: its positional and keyword arguments, and where they come from."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    #: ``"recorded"`` (a forward pass of the model) or ``"synthetic"`` (built from the module's parameters).
    source: str = "recorded"

    def run(self, module: nn.Module) -> Any:
        return module(*self.args, **self.kwargs)

    @property
    def where(self) -> str:
        """How a reason names these inputs."""
        return "the input the model gives it" if self.source == "recorded" else "a probe input"


@dataclass
class Recording:
    """The calls of the chosen modules in one forward pass, by module object."""

    calls: dict[nn.Module, list[ModuleCall]] = field(default_factory=dict)
    #: Modules whose own forward failed in the pass (``exception_line``), a stand-in computing for them.
    cannot_run: dict[nn.Module, str] = field(default_factory=dict)
    #: Why the pass stopped (modules after that point have no calls), or ``None``.
    error: str | None = None


class _Copies:
    """Copies of call arguments that later in-place ops of the forward pass cannot change, one per tensor:
    a layer and the sublayer it hands its input to share the copy (a weak reference tells a tensor that
    is still alive from a new one at a reused address)."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def __call__(self, value: Any) -> Any:
        return pytree.tree_map(lambda v: self._copy(v) if isinstance(v, torch.Tensor) else v, value)

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        made = self._made.get(id(tensor))
        if made is not None and made[0]() is tensor:
            return made[1]
        copy = tensor.detach().clone()
        self._made[id(tensor)] = (weakref.ref(tensor), copy)
        return copy


def _standing_in(module: nn.Module, make: Callable[[], nn.Module], recording: Recording) -> Callable[..., Any]:
    """``module.forward``, falling back to ``make()``'s module where the original raises."""
    original = module.forward
    stand_in: list[nn.Module] = []

    def forward(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as exc:
            if not stand_in:
                stand_in.append(make())
            recording.cannot_run.setdefault(module, exception_line(exc, 160))
            return stand_in[0](*args, **kwargs)

    return forward


def record_calls(
    model: nn.Module, args: tuple, modules: Iterable[nn.Module], stand_ins: Mapping[nn.Module, Callable[[], nn.Module]] | None = None
) -> Recording:
    """Run ``model(*args)`` once, keeping the arguments ``modules`` are called with (as given to the call,
    before any hook of theirs); ``stand_ins`` build a replacement for a module whose forward fails.

    The model is left as it was (hooks removed, forwards restored), even when the pass fails.
    """
    recording = Recording()
    chosen = set(modules)
    kept = _Copies()

    def keep(module: nn.Module, call_args: tuple, call_kwargs: dict) -> None:
        calls = recording.calls.setdefault(module, [])
        if len(calls) < CALLS_KEPT:
            calls.append(ModuleCall(kept(tuple(call_args)), kept(dict(call_kwargs))))

    handles = [m.register_forward_pre_hook(keep, with_kwargs=True, prepend=True) for m in chosen]
    patched = []
    try:
        for module, make in (stand_ins or {}).items():
            module.forward = _standing_in(module, make, recording)
            patched.append(module)
        with torch.no_grad():
            model(*args)
    except Exception as exc:
        recording.error = exception_line(exc, 200)
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward
    return recording


def is_plain_torch(module: nn.Module, call: ModuleCall) -> bool:
    """Whether ``module`` runs on ``call`` with plain torch ops only: it runs, its output is differentiable
    and no custom ``autograd.Function`` (a CUDA kernel's usual wrapper) is on the way to it.

    An extension call outside autograd leaves the output without history; a Function leaves its own node.
    """
    inputs = pytree.tree_map(  # non-leaf copies of leaves that require grad: in-place ops on them stay legal
        lambda v: v.detach().requires_grad_().clone() if isinstance(v, torch.Tensor) and v.is_floating_point() else v, call.args
    )
    try:
        with torch.enable_grad():
            outputs = module(*inputs, **call.kwargs)
    except Exception:
        return False
    nodes = [o.grad_fn for o in pytree.tree_leaves(outputs) if isinstance(o, torch.Tensor) and o.is_floating_point()]
    if not nodes or any(n is None for n in nodes):
        return False
    seen: set = set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            return False
        nodes.extend(next_node for next_node, _ in node.next_functions)
    return True


def failing_module(model: nn.Module, args: tuple) -> str | None:
    """The path of the innermost module whose call raises when ``model(*args)`` runs (``""`` for the root),
    or ``None`` when it runs."""
    paths = {module: path for path, module in model.named_modules()}
    active: list[str] = []
    failed: list[str] = []

    def enter(module: nn.Module, _args: tuple) -> None:
        active.append(paths.get(module, "?"))

    def leave(module: nn.Module, _args: tuple, _out: Any) -> None:
        active.pop()

    handles = [m.register_forward_pre_hook(enter) for m in paths] + [m.register_forward_hook(leave) for m in paths]
    try:
        with torch.no_grad():
            model(*args)
    except Exception:
        failed.append(active[-1] if active else "")
    finally:
        for handle in handles:
            handle.remove()
    return failed[0] if failed else None
