"""The load stage: a model file -> an eval-mode module with the original (unrewritten) layers.

Three kinds of file are accepted:

* a toolkit checkpoint (:mod:`modconv_export.load.checkpoint`): its family builds the model, strictly;
* a bare ``state_dict`` of a registered family, recognised by its keys (also when nested under an
  obvious key such as ``"state_dict"`` or ``"params_ema"``), loaded strictly;
* a pickled ``nn.Module`` (``torch.save(model)``), only with ``trust_pickle=True``: unpickling runs code.

Every file is read with ``torch.load(weights_only=True)`` only, which never runs code: a pickled
module is read by the same unpickler under the allowlist of :mod:`modconv_export.load.allowlist`, and only
on trust. The file is opened once (a FIFO or device is refused before anything blocks on it) and the
listing of its globals and the load read the same open file. Each failure is a
:class:`~modconv_export.errors.LoadError` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn as nn

from .._util import exception_line, forward_parameters
from .._util.memory import is_allocation_failure
from ..errors import LoadError, ModconvExportError
from ..families import Family, InputSpec, get_family, recognize
from .allowlist import OUTSIDE, Allowlist, Decision, decide, resolve_allowed, restore_classes
from .checkpoint import checkpoint_from_dict, is_toolkit_checkpoint
from .pickle_scan import is_legacy_torch_file, unsafe_globals

__all__ = ["LoadedModel", "forward_parameters", "load_model"]

#: Keys under which training scripts commonly nest the weights (first match wins).
NESTED_STATE_KEYS = ("state_dict", "params_ema", "g_ema", "params", "model", "generator", "netG", "G_ema")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


@dataclass
class LoadedModel:
    """What :func:`load_model` returns; ``module`` is in eval mode with the original layers."""

    module: nn.Module
    kind: str  # "checkpoint" | "state_dict" | "pickle"
    family: Family | None
    config: dict = field(default_factory=dict)
    #: Example inputs in forward order when known (from the family), else ``None``.
    inputs: list[InputSpec] | None = None
    path: Path | None = None

    def describe(self) -> str:
        what = {"checkpoint": "modconv-export checkpoint", "state_dict": "state_dict", "pickle": "pickled module"}[self.kind]
        cls = type(self.module).__name__
        fam = f", family {self.family.name!r}" if self.family else ""
        return f"{what} ({cls}{fam}, {_count_parameters(self.module):,} parameters)"


def load_model(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    import_paths: Sequence[str | os.PathLike] = (),
    allow_globals: Sequence[str] = (),
) -> LoadedModel:
    """Load a toolkit checkpoint, a family state_dict or (with ``trust_pickle``) a pickled module.

    A pickled module may use only what :mod:`modconv_export.load.allowlist` allows: torch.nn classes, pure
    math functions, classes defined in files under ``import_paths`` or the current directory, and the
    ``MODULE.NAME`` globals in ``allow_globals``; anything else is refused before any object is built.
    ``sys.path`` is restored afterwards. Raises :class:`LoadError` for a missing, unreadable, corrupt,
    unsafe or unrecognised file, a strict-load mismatch, complex weights, or weights with NaN/Inf.
    """
    path = Path(path).expanduser()
    with _open_regular(path) as f:
        fmt = _sniff(f, path)
        obj, refusal = _load_weights_only(f, path, fmt)
        if refusal is None:
            loaded = _from_data(obj, path)
        elif not trust_pickle:
            raise LoadError(
                f"{path}: {refusal}: it holds pickled Python objects and loading it would run code; "
                "if you trust its source, re-run with --trust-pickle (Python: trust_pickle=True)"
            )
        else:
            loaded = _from_trusted_pickle(f, path, fmt, import_paths, allow_globals)
    loaded.module.eval()
    loaded.path = path
    _check_weights(loaded.module, path)
    return loaded


# -- reading the file -------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading; anything but a regular file (a FIFO, a device, a socket) is refused at once."""
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it is refused right after.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise LoadError(f"{path}: is a directory, not a model file")
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise LoadError(f"{path}: is {kind}, not a model file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        yield f


def _sniff(f: IO[bytes], path: Path) -> str:
    """``"zip"`` or ``"pickle"``; a clear error for everything torch.load cannot possibly read."""
    try:
        head = f.read(4096)
        f.seek(0)
    except OSError as exc:
        raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not head:
        raise LoadError(f"{path}: is empty (0 bytes)")
    if head.startswith(_ZIP_MAGIC):
        _check_zip(f, path)
        return "zip"
    if head[0] == _PICKLE_PROTO:
        if not is_legacy_torch_file(f):  # torch.load cannot read it, and a full unpickle would run it first
            raise LoadError(f"{path}: is a plain pickle (pickle.dump) or a damaged file, not a model saved with torch.save")
        return "pickle"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a multi-byte character cut at the end
                raise LoadError(f"{path}: is not a PyTorch file (unknown binary format)") from None
        raise LoadError(f"{path}: is a text file, not a model saved with torch.save")
    raise LoadError(f"{path}: is not a PyTorch file (unknown binary format)")


def _check_zip(f: IO[bytes], path: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
            bad = zf.testzip()  # CRC of every member: catches corruption before any unpickling
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise LoadError(f"{path}: is truncated or corrupt (zip archive unreadable: {exc})") from exc
    finally:
        f.seek(0)
    if bad is not None:
        raise LoadError(f"{path}: is corrupt (checksum mismatch in {bad})")
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        raise LoadError(f"{path}: is a TorchScript archive (torch.jit.save); export from the model's checkpoint instead")
    if not any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names):
        raise LoadError(f"{path}: is a zip archive but not a torch.save file (no data.pkl)")


def _load_weights_only(f: IO[bytes], path: Path, fmt: str) -> tuple[Any, str | None]:
    """``(object, None)`` when the safe loader reads the file; ``(None, why)`` when it needs more."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True), None
    except pickle.UnpicklingError as exc:
        message = str(exc)
    except Exception as exc:  # torch's readers fail in many ways on damaged bytes (even AssertionError)
        if is_allocation_failure(exc):
            raise
        raise LoadError(f"{path}: is truncated or corrupt ({exception_line(exc)})") from exc
    finally:
        f.seek(0)
    found = _globals_of(f, path, fmt)
    named = re.search(r"GLOBAL ([\w.]+)", message)
    needed = named.group(1) if named else (found[0] if found else None)
    if needed is not None:
        return None, f"needs the Python global {needed}"
    reason = next((ln.strip() for ln in message.splitlines() if "Unsupported" in ln), "unsupported pickle data")
    return None, f"the safe loader cannot read it ({reason})"


def _unpickler_reason(exc: BaseException) -> str:
    """The unpickler's own reason out of torch's multi-paragraph "Weights only load failed" text."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split())[:300] or type(exc).__name__


def _globals_of(f: IO[bytes], path: Path, fmt: str) -> list[str]:
    try:
        return unsafe_globals(f, fmt)
    except ValueError as exc:
        raise LoadError(f"{path}: is truncated or corrupt (pickle data unreadable: {exc})") from None


@contextlib.contextmanager
def _on_sys_path(paths: Sequence[Path]) -> Iterator[None]:
    added = [str(p) for p in paths if str(p) not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def _refusal(path: Path, refused: Sequence[Decision]) -> LoadError:
    listed = [d.name + ("" if d.refused == OUTSIDE else f" ({d.refused})") for d in refused[:5]]
    more = f" (+{len(refused) - 5} more)" if len(refused) > 5 else ""
    return LoadError(
        f"{path}: refused even with --trust-pickle: it needs globals outside the allowlist: {', '.join(listed)}{more} "
        "(allowed: torch.nn classes, pure math functions, classes defined in --import-path directories or the current "
        "directory; --allow-global MODULE.NAME adds one you trust)"
    )


def _from_trusted_pickle(
    f: IO[bytes], path: Path, fmt: str, import_paths: Sequence[str | os.PathLike], allow_globals: Sequence[str]
) -> LoadedModel:
    dirs = [Path(os.path.realpath(os.path.expanduser(p))) for p in import_paths]
    for given, d in zip(import_paths, dirs):
        if not d.is_dir():
            raise LoadError(f"--import-path {given}: not a directory")
    dirs.append(Path.cwd().resolve())
    allowed = resolve_allowed(allow_globals)
    with _on_sys_path(dirs):
        allowlist = Allowlist([decide(name, dirs, allowed) for name in _globals_of(f, path, fmt)])
        if allowlist.refused:  # before any object is built
            raise _refusal(path, allowlist.refused)
        try:
            with torch.serialization.safe_globals(allowlist.safe_globals()):
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # the unpickler's own refusal (a global the listing missed, a guarded call)
            if fmt == "pickle" and "persistent_load" in str(exc):  # the legacy format records module classes so
                raise LoadError(f"{path}: is a pickled module in torch's legacy format (_use_new_zipfile_serialization=False), "
                                "which the safe unpickler cannot read; re-save it with torch.save's default format") from exc  # fmt: skip
            raise LoadError(f"{path}: refused even with --trust-pickle: {_unpickler_reason(exc)}") from exc
        except Exception as exc:
            if is_allocation_failure(exc):
                raise
            raise LoadError(f"{path}: unpickling failed ({exception_line(exc)})") from exc
    obj = restore_classes(obj)
    module = _single_module(obj)
    if module is None:
        return _from_data(obj, path)
    family, config, inputs = _family_of_module(module)
    return LoadedModel(module, "pickle", family, config, inputs)


def _single_module(obj: Any) -> nn.Module | None:
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):
        modules = [v for v in obj.values() if isinstance(v, nn.Module)]
        if len(modules) == 1:
            return modules[0]
    return None


def _family_of_module(module: nn.Module) -> tuple[Family | None, dict, list[InputSpec] | None]:
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


# -- state dicts and families -----------------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap_state_dict(obj: Any) -> dict | None:
    state = obj if _is_state_dict(obj) else None
    if state is None and isinstance(obj, Mapping):
        state = next((obj[k] for k in NESTED_STATE_KEYS if _is_state_dict(obj.get(k))), None)
    if state is None:
        return None
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(map(repr, list(obj)[:5]))
        return f"dict with keys {keys}{' ...' if len(obj) > 5 else ''}" if obj else "empty dict"
    return type(obj).__name__


def _from_data(obj: Any, path: Path) -> LoadedModel:
    if is_toolkit_checkpoint(obj):
        ckpt = checkpoint_from_dict(obj, str(path))
        try:
            family = get_family(ckpt.family)
        except ModconvExportError as exc:
            raise LoadError(f"{path}: {exc}") from exc
        module, config = _build(family, ckpt.state_dict, ckpt.config, path)
        return LoadedModel(module, "checkpoint", family, config, family.inputs(config))
    state = _unwrap_state_dict(obj)
    if state is None:
        raise LoadError(f"{path}: holds a {_describe(obj)}, not a model, a state_dict or a modconv-export checkpoint")
    try:
        family = recognize(state)
    except ModconvExportError as exc:
        raise LoadError(f"{path}: {exc}") from exc
    module, config = _build(family, state, None, path)
    return LoadedModel(module, "state_dict", family, config, family.inputs(config))


def _build(family: Family, state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None, path: Path) -> tuple[nn.Module, dict]:
    _check_real(list(state.items()), path)
    converted = family.convert_state_dict(state) if family.convert_state_dict else state
    try:
        config = dict(config) if config is not None else family.infer_config(converted)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise LoadError(f"{path}: looks like family {family.name!r} but its config cannot be inferred: {exc}") from exc
    try:
        module = family.load(state, config)
    except RuntimeError as exc:
        raise LoadError(f"{path}: does not fit family {family.name!r} ({_strict_mismatch(family, config, converted, exc)})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"{path}: family {family.name!r} cannot be built with config {config}: {exc}") from exc
    return module, config


def _listing(keys: Sequence[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _strict_mismatch(family: Family, config: Mapping[str, Any], given: Mapping[str, torch.Tensor], exc: Exception) -> str:
    """torch's multi-line strict-load message as one line: the first few missing/unexpected/mismatched keys."""
    try:
        expected = family.build(config).state_dict()
    except Exception:
        return " ".join(str(exc).split())[:300]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} (file {list(given[k].shape)}, model {list(v.shape)})" for k, v in expected.items() if k in given and given[k].shape != v.shape
    ]
    parts = [
        f"{label}: {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    return "; ".join(parts) or " ".join(str(exc).split())[:300]


# -- checks -----------------------------------------------------------------------------------------


def _count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_real(tensors: Sequence[tuple[str, torch.Tensor]], path: Path) -> None:
    """Complex weights would lose their imaginary part when copied into a real model: refuse them."""
    bad = [f"{name} ({str(t.dtype).replace('torch.', '')})" for name, t in tensors if isinstance(t, torch.Tensor) and t.is_complex()]
    if bad:
        raise LoadError(f"{path}: holds complex (non-real) tensors, which no exported graph can take: {_listing(bad)}")


def _check_weights(module: nn.Module, path: Path) -> None:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    _check_real(tensors, path)
    bad = []
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int((~finite).sum()) - nan
        counts = ", ".join(s for s in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if s)
        bad.append(f"{name} ({counts})")
    if bad:
        raise LoadError(f"{path}: weights contain NaN/Inf: {_listing(bad)}")
