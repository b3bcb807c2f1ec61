"""Pickled modules (``torch.save(model)``), only on trust: read by torch's ``weights_only`` unpickler under the
allowlist of :mod:`.allowlist`, after :mod:`.pickle_scan` has named every global the file needs."""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn as nn

from .._util import exception_line, forward_parameters
from .._util.memory import is_allocation_failure
from ..errors import LoadError, ModconvExportError
from ..families import Family, InputSpec, recognize
from .allowlist import OUTSIDE, Allowlist, Decision, decide, resolve_allowed
from .checkout import Checkout
from .class_guard import restore_classes
from .loaded import LoadedModel
from .persistence import PERSISTENT_OBJ
from .pickle_scan import unsafe_globals
from .records import RecordRefused, record_globals
from .state_dicts import from_data, listing

__all__ = ["from_trusted_pickle", "load_weights_only"]


def load_weights_only(f: IO[bytes], path: Path, fmt: str) -> tuple[Any, str | None]:
    """``(object, None)`` when the safe loader reads the file; ``(None, why)`` when it needs more.

    Plain records (a training script's ``argparse.Namespace``) are read as data (:mod:`.records`)."""
    try:
        with torch.serialization.safe_globals(record_globals()):
            return torch.load(f, map_location="cpu", weights_only=True), None
    except pickle.UnpicklingError as exc:
        if isinstance(exc.__context__, RecordRefused):  # a record that is not plain data: no trust makes it so
            raise LoadError(f"{path}: {exc.__context__} (a training script's argparse.Namespace is read as data)") from None
        message = str(exc)
    except Exception as exc:  # torch's readers fail in many ways on damaged bytes (even AssertionError)
        if is_allocation_failure(exc):
            raise
        raise LoadError(f"{path}: is truncated or corrupt ({exception_line(exc)})") from exc
    finally:
        f.seek(0)
    found = globals_of(f, path, fmt)
    named = re.search(r"GLOBAL ([\w.]+)", message)
    needed = named.group(1) if named else (found[0] if found else None)
    if needed is not None:
        return None, f"needs the Python global {needed}"
    reason = next((ln.strip() for ln in message.splitlines() if "Unsupported" in ln), "unsupported pickle data")
    return None, f"the safe loader cannot read it ({reason})"


def unpickler_reason(exc: BaseException) -> str:
    """The unpickler's own reason out of torch's multi-paragraph "Weights only load failed" text."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split())[:300] or type(exc).__name__


def globals_of(f: IO[bytes], path: Path, fmt: str) -> list[str]:
    try:
        return unsafe_globals(f, fmt)
    except ValueError as exc:
        raise LoadError(f"{path}: is truncated or corrupt (pickle data unreadable: {exc})") from None


@contextlib.contextmanager
def on_sys_path(paths: Sequence[Path]) -> Iterator[None]:
    added = [str(p) for p in paths if str(p) not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def refusal(path: Path, refused: Sequence[Decision]) -> LoadError:
    failing = [d for d in refused if d.import_error]
    if failing:  # the allowlist would allow these classes: the cause is their module, say so
        module, error = failing[0].import_error or ("", "")  # the first error: a second import of a half-imported module says less
        names = [d.name for d in failing if (d.import_error or ("", ""))[0] == module]
        return LoadError(
            f"{path}: cannot be unpickled: its classes {listing(names)} are defined in {module}, which fails to import here: {error}"
        )
    listed = [d.name + ("" if d.refused == OUTSIDE else f" ({d.refused})") for d in refused[:5]]
    more = f" (+{len(refused) - 5} more)" if len(refused) > 5 else ""
    return LoadError(
        f"{path}: refused even with --trust-pickle: it needs globals outside the allowlist: {', '.join(listed)}{more} "
        "(allowed: torch.nn classes, pure math functions, classes defined in --import-path directories or the current "
        "directory; --allow-global MODULE.NAME adds one you trust)"
    )


def from_trusted_pickle(
    f: IO[bytes], path: Path, fmt: str, import_paths: Sequence[str | os.PathLike], allow_globals: Sequence[str]
) -> LoadedModel:
    dirs = [Path(os.path.realpath(os.path.expanduser(p))) for p in import_paths]
    for given, d in zip(import_paths, dirs):
        if not d.is_dir():
            raise LoadError(f"--import-path {given}: not a directory")
    dirs.append(Path.cwd().resolve())
    allowed = resolve_allowed(allow_globals)
    with on_sys_path(dirs):
        allowlist = Allowlist([decide(name, dirs, allowed) for name in globals_of(f, path, fmt)])
        if allowlist.refused:  # before any object is built
            raise refusal(path, allowlist.refused)
        try:
            with torch.serialization.safe_globals(allowlist.safe_globals()):
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # the unpickler's own refusal (a global the listing missed, a guarded call)
            if fmt == "pickle" and "persistent_load" in str(exc):  # the legacy format records module classes so
                raise LoadError(f"{path}: is a pickled module in torch's legacy format (_use_new_zipfile_serialization=False), "
                                "which the safe unpickler cannot read; re-save it with torch.save's default format") from exc  # fmt: skip
            raise LoadError(f"{path}: refused even with --trust-pickle: {unpickler_reason(exc)}") from exc
        except Exception as exc:
            if is_allocation_failure(exc):
                raise
            raise LoadError(f"{path}: unpickling failed ({exception_line(exc)})") from exc
    obj = restore_classes(obj)
    notes: list[str] = []
    if any(d.name == PERSISTENT_OBJ for d in allowlist.decisions):  # NVlabs networks inside: their classes from the checkout
        checkout = Checkout(dirs, str(path))
        obj = checkout.restore_within(obj)
        notes = checkout.notes()
    module = single_module(obj)
    if module is None:
        return from_data(obj, path)
    family, config, inputs = family_of_module(module)
    return LoadedModel(module, "pickle", family, config, inputs, notes=notes)


def single_module(obj: Any) -> nn.Module | None:
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):
        modules = [v for v in obj.values() if isinstance(v, nn.Module)]
        if len(modules) == 1:
            return modules[0]
    return None


def family_of_module(module: nn.Module) -> tuple[Family | None, dict, list[InputSpec] | None]:
    """A registered family whose keys and forward arity fit a pickled module: its inputs are defaults."""
    try:
        family = recognize(module.state_dict())
        config = family.infer_config(family.convert_state_dict(module.state_dict()) if family.convert_state_dict else module.state_dict())
        specs = family.inputs(config)
    except (ModconvExportError, ValueError, KeyError, TypeError):
        return None, {}, None
    names, _, _ = forward_parameters(module)
    if len(names) != len(specs):
        return None, {}, None
    return family, config, specs
