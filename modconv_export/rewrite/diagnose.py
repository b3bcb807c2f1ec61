"""Turn an exporter's failure into one line that names the module path and the op (or source line).

The exporters say *what* failed in their own terms -- an aten op (``aten::linalg_svdvals``, node
``%_linalg_svd``) or, for data-dependent control flow, a guard raised inside the user's ``forward`` --
but not *which module* of a large generator it belongs to. Two facts recover that:

* a failure raised while torch.export runs the user's code carries that code's frames, and a frame's
  ``self`` is the module (located in the model by identity or by position in the module tree);
* for an op the exporter cannot convert, one eager pass of the model under a dispatch mode records
  which module called which op, and the op named in the error is looked up there.
"""

from __future__ import annotations

import linecache
import os
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .._util import first_line
from ..errors import plain_text

__all__ = ["describe_export_failure", "ops_by_module"]

_TORCH_DIR = os.path.dirname(torch.__file__)
#: Where the exporters name the failing op, most specific first.
_OP_PATTERNS = (
    r"Exporting the operator '(?:aten::)?(\w+)'",
    r"OpOverload\(op='aten\.(\w+)'",
    r"target=torch\.ops\.aten\.(\w+)\.",
    r"\baten(?:::|\.|_)(\w+)",
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _module_label(model: nn.Module, path: str) -> str:
    module = model.get_submodule(path) if path else model
    return f"module '{path or '<root>'}' ({type(module).__name__})"


def _user_frame(model: nn.Module, chain: list[BaseException]) -> tuple[str, str, int] | None:
    """(module path, file, line) of the innermost frame of the model's code in the tracebacks."""
    own = {id(m): p for p, m in model.named_modules()}
    for exc in reversed(chain):  # the innermost exception holds the deepest traceback
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and not tb.tb_frame.f_code.co_filename.startswith(_TORCH_DIR):
                frames.append((owner, tb.tb_frame.f_code.co_filename, tb.tb_lineno))
            tb = tb.tb_next
        if not frames:
            continue
        inner, filename, lineno = frames[-1]
        if id(inner) in own:
            return own[id(inner)], filename, lineno
        for outer, _, _ in frames:  # the exporter ran a copy: find the innermost module by position in it
            if type(outer) is type(model):
                path = next((p for p, m in outer.named_modules() if m is inner), None)
                if path is not None:
                    return path, filename, lineno
    return None


def _scope_path(model: nn.Module, text: str) -> str | None:
    """The module path in a TorchScript-exporter scope (``pkg.Root::/pkg.Conv::up/pkg.Pad::padding``).

    Scope names are either each module's own name (``up``, ``padding``) or already qualified
    (``body``, ``body.1``); the joined path is tried first, then the last name alone.
    """
    match = re.search(r"scope: (\S+::\S*)", text)
    if match is None:
        return None
    names = [n for n in (part.rpartition("::")[2] for part in match.group(1).split("/")) if n]
    known = {p for p, _ in model.named_modules()}
    for candidate in (".".join(names), names[-1] if names else ""):
        if candidate and candidate in known:
            return candidate
    return None


def ops_by_module(model: nn.Module, args: tuple) -> dict[str, list[str]]:
    """Run ``model(*args)`` once and map every op name it calls (torch-level and aten) to module paths."""
    stack: list[str] = []
    seen: dict[str, list[str]] = {}

    def record(name: str) -> None:
        paths = seen.setdefault(name, [])
        where = stack[-1] if stack else ""
        if where not in paths:
            paths.append(where)

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            record(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            record(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    def enter(path: str):
        def hook(module, inputs) -> None:  # hooks must return None, or they replace inputs/outputs
            stack.append(path)

        return hook

    def leave(module, inputs, outputs) -> None:
        if stack:
            stack.pop()

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(path)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), Functions(), Dispatch():
            model(*args)
    except Exception:
        pass  # what ran before the failure is recorded; that is all we need
    finally:
        for handle in handles:
            handle.remove()
    return seen


def describe_export_failure(
    model: nn.Module, args: Any, exc: BaseException, exporter: str = "dynamo", suspects: Sequence[str] = (), *, action: str | None = None
) -> str | None:
    """One line naming the module path and the op or source line behind ``exc``; ``None`` if unknown.

    ``model``/``args`` are the model as its modules are (before graph capture) and example inputs.
    ``suspects`` are module paths to blame first when an op is used in many places (the rewrite's
    near misses: a look-alike left unrewritten is the usual culprit). ``action`` names what failed
    (default ``"<exporter> export"``).
    """
    action = action or f"{exporter} export"
    chain = _chain(exc)
    text = plain_text("\n".join(str(e) for e in chain))
    reason = first_line(chain[-1], limit=200)
    if "No ONNX function found" in text:
        reason = "it has no ONNX conversion in the dynamo exporter"
    if "data-dependent" in text:
        reason = "data-dependent control flow (a Python branch or size computed from tensor values), which torch.export cannot trace"
    site = _user_frame(model, chain)
    if site is not None:
        path, filename, lineno = site
        code = linecache.getline(filename, lineno).strip()
        where = f"{filename.rsplit('/', 1)[-1]}:{lineno}" + (f" `{code}`" if code else "")
        return f"{action} failed in {_module_label(model, path)} at {where}: {reason}"
    reason = reason.split(" [Caused by")[0].strip().rstrip(".")
    scope = _scope_path(model, text)
    if scope is not None:
        return f"{action} failed in {_module_label(model, scope)}: {reason}"
    op = next((m.group(1) for p in _OP_PATTERNS for m in [re.search(p, text)] if m), None)
    if op is None:
        return None
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    callers = ops_by_module(model, args)
    paths = callers.get(op) or callers.get(op.lstrip("_")) or []
    detail = reason if op in reason else f"op aten::{op}: {reason}"
    flagged = [p for p in paths if any(p == s or p.startswith(f"{s}.") for s in suspects)]
    if len(flagged or paths) == 1:
        return f"{action} failed in {_module_label(model, (flagged or paths)[0])}: {detail}"
    if not paths:
        return f"{action} failed on op aten::{op}: {reason}"
    more = f" (+{len(paths) - 4} more)" if len(paths) > 4 else ""
    used = ", ".join(repr(p or "<root>") for p in paths[:4])
    return f"{action} failed on op aten::{op}, used in modules {used}{more}: {reason}"
