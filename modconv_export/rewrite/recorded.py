"""What each module receives in the model: the inputs the module rules are proven on.

A rule's replacement must compute what the module computes *as the model uses it*. A slimmable generator
feeds a layer fewer channels than its parameters hold (and the layer slices its bias to match); a probe
built from the parameters' shapes would prove a full-width replacement on inputs the model never gives it.
So, as the graph stage's probe does, the module rules are proven on one forward pass of the whole model:
:func:`record_calls` keeps the arguments each chosen module is called with.

That pass runs on fake tensors first (``shapes_only``: shapes and dtypes, no numbers -- a 1024 px
generator's forward pass costs seconds and gigabytes, its fake pass a fraction of a second per layer);
each module is then proven on random inputs of exactly the shapes it receives, drawn when its turn comes
(:meth:`ModuleCall.materialized`). Where the fake pass cannot say (an op without a fake kernel, integer
arguments whose values matter), the pass runs again on the real inputs and keeps copies of them.

A module that cannot run here at all (a CUDA-only extension on the CPU) would stop that forward pass; where
a rule may replace such a module, its replacement stands in for it during the pass (and the module is
listed in :attr:`Recording.cannot_run`), so that the modules after it are still reached.

:func:`failing_module` finds where a forward pass fails (the innermost module whose call raised), for
errors that name the module a rule changed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils import _pytree as pytree

from .._util import exception_line

__all__ = ["ModuleCall", "Recording", "TensorShape", "failing_module", "is_plain_torch", "record_calls"]

#: Calls kept per module (a module the model calls more often is proven on its first ones).
CALLS_KEPT = 2


@dataclass(frozen=True)
class TensorShape:
    """A floating-point tensor argument recorded by its shape and dtype alone (the fake pass)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def make(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.shape, generator=generator).to(self.dtype)


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module: its positional and keyword arguments, and where they come from."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    #: ``"recorded"`` (a forward pass of the model) or ``"synthetic"`` (built from the module's parameters).
    source: str = "recorded"
    #: Whether the tensors hold the model's own values (``False``: random values of the recorded shapes).
    values: bool = True

    def run(self, module: nn.Module) -> Any:
        return module(*self.args, **self.kwargs)

    def materialized(self, seed: int = 0) -> ModuleCall:
        """This call with every :class:`TensorShape` drawn as a standard-normal tensor (seeded)."""
        leaves = pytree.tree_leaves((self.args, self.kwargs))
        if not any(isinstance(v, TensorShape) for v in leaves):
            return self
        generator = torch.Generator().manual_seed(seed)
        args, kwargs = pytree.tree_map(lambda v: v.make(generator) if isinstance(v, TensorShape) else v, (self.args, self.kwargs))
        return ModuleCall(args, kwargs, self.source, values=False)

    @property
    def where(self) -> str:
        """How a reason names these inputs."""
        if self.source != "recorded":
            return "a probe input"
        return "the input the model gives it" if self.values else "an input of the shape the model gives it"


@dataclass
class Recording:
    """The calls of the chosen modules in one forward pass, by module object."""

    calls: dict[nn.Module, list[ModuleCall]] = field(default_factory=dict)
    #: Modules whose own forward failed in the pass (``exception_line``), a stand-in computing for them.
    cannot_run: dict[nn.Module, str] = field(default_factory=dict)
    #: Why the pass stopped (modules after that point have no calls), or ``None``.
    error: str | None = None


class _NeedsValues(Exception):
    """The fake pass met an argument whose values a proof may need (an integer tensor)."""


class _Copies:
    """Copies of call arguments that later in-place ops of the forward pass cannot change, one per tensor:
    a layer and the sublayer it hands its input to share the copy (a weak reference tells a tensor that
    is still alive from a new one at a reused address). A fake tensor is kept as its :class:`TensorShape`."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def __call__(self, value: Any) -> Any:
        return pytree.tree_map(lambda v: self._copy(v) if isinstance(v, torch.Tensor) else v, value)

    def _copy(self, tensor: torch.Tensor) -> Any:
        if isinstance(tensor, FakeTensor):
            if not tensor.is_floating_point():
                raise _NeedsValues(f"an argument of dtype {tensor.dtype}")
            return TensorShape(tuple(int(n) for n in tensor.shape), tensor.dtype)
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
    model: nn.Module,
    args: tuple,
    modules: Iterable[nn.Module],
    stand_ins: Mapping[nn.Module, Callable[[], nn.Module]] | None = None,
    *,
    shapes_only: bool = False,
) -> Recording:
    """Run ``model(*args)`` once, keeping the arguments ``modules`` are called with (as given to the call,
    before any hook of theirs); ``stand_ins`` build a replacement for a module whose forward fails.
    ``shapes_only`` runs it on fake tensors and keeps floating-point arguments as :class:`TensorShape`
    (see the module docstring); its ``error`` then also says where the fake pass could not tell.

    The model is left as it was (hooks removed, forwards restored), even when the pass fails.
    """
    recording = Recording()
    chosen = set(modules)
    kept = _Copies()

    def keep(module: nn.Module, call_args: tuple, call_kwargs: dict) -> None:
        calls = recording.calls.setdefault(module, [])
        if len(calls) < CALLS_KEPT:
            with unset_fake_temporarily():  # real copies of real arguments, even inside the fake pass
                calls.append(ModuleCall(kept(tuple(call_args)), kept(dict(call_kwargs))))

    handles = [m.register_forward_pre_hook(keep, with_kwargs=True, prepend=True) for m in chosen]
    patched = []
    try:
        for module, make in (stand_ins or {}).items():
            module.forward = _standing_in(module, make, recording)
            patched.append(module)
        mode = FakeTensorMode(allow_non_fake_inputs=True) if shapes_only else None
        with torch.no_grad(), mode or contextlib.nullcontext():
            model(*(pytree.tree_map(lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v, args) if mode else args))
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
    Asked on fake tensors first (what autograd records does not depend on the numbers, and a full-size
    feature map costs nothing there), on the real call where the fake run cannot tell.
    """
    verdict = _plain_torch_run(module, call, fake=True)
    return verdict if verdict is not None else bool(_plain_torch_run(module, call, fake=False))


def _plain_torch_run(module: nn.Module, call: ModuleCall, fake: bool) -> bool | None:
    """:func:`is_plain_torch` on real or fake tensors; ``None`` where a fake run raised."""
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None

    def leaf(v: Any) -> Any:  # non-leaf copies of leaves that require grad: in-place ops on them stay legal
        if isinstance(v, TensorShape):  # (a fake one inside the mode)
            v = torch.empty(v.shape, dtype=v.dtype)
        if not (isinstance(v, torch.Tensor) and v.is_floating_point()):
            return v
        return (mode.from_tensor(v) if mode and not isinstance(v, FakeTensor) else v).detach().requires_grad_().clone()

    call = call if fake else call.materialized()
    try:
        with mode or contextlib.nullcontext():
            inputs = pytree.tree_map(leaf, call.args)
            kwargs = pytree.tree_map(lambda v: torch.empty(v.shape, dtype=v.dtype) if isinstance(v, TensorShape) else v, call.kwargs)
            with torch.enable_grad():
                outputs = module(*inputs, **kwargs)
            nodes = [o.grad_fn for o in pytree.tree_leaves(outputs) if isinstance(o, torch.Tensor) and o.is_floating_point()]
    except Exception:
        return None if fake else False
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
