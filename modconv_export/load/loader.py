"""The load stage: a model file -> an eval-mode module with the original (unrewritten) layers.

Four kinds of file are accepted:

* a toolkit checkpoint (:mod:`modconv_export.load.checkpoint`): its family builds the model, strictly;
* a bare ``state_dict`` of a registered family, recognised by its keys (also when nested under an
  obvious key such as ``"state_dict"`` or ``"params_ema"``), loaded strictly;
* a pickled ``nn.Module`` (``torch.save(model)``), only with ``trust_pickle=True``: unpickling runs code;
* an NVlabs network pickle (StyleGAN2-ADA, StyleGAN3: ``pickle.dump`` of persistence objects), restored with
  the classes of the checkout under ``import_paths`` (:mod:`modconv_export.load.nvlabs`); ``generator`` says
  which network and which inputs.

Every torch file is read with ``torch.load(weights_only=True)`` only, which never runs code: a pickled
module is read by the same unpickler under the allowlist of :mod:`modconv_export.load.allowlist`, and only
on trust. An NVlabs pickle is read by Python's unpickler restricted to the same allowlist
(:mod:`modconv_export.load.plain_pickle`); the source code it carries is never run. The file is opened once (a FIFO or device is refused before anything blocks on it) and the
listing of its globals and the load read the same open file. Each failure is a
:class:`~modconv_export.errors.LoadError` with a one-line reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn

from .._util import forward_parameters
from ..errors import LoadError
from .files import NVLABS, open_regular, sniff
from .loaded import LoadedModel
from .nvlabs import from_nvlabs_pickle
from .options import GeneratorOptions
from .pickled import from_trusted_pickle, load_weights_only
from .state_dicts import check_real, from_data, listing

__all__ = ["LoadedModel", "forward_parameters", "load_model"]


def load_model(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    import_paths: Sequence[str | os.PathLike] = (),
    allow_globals: Sequence[str] = (),
    generator: GeneratorOptions | None = None,
) -> LoadedModel:
    """Load a toolkit checkpoint, a family state_dict or (with ``trust_pickle``) a pickled module.

    A pickled module may use only what :mod:`modconv_export.load.allowlist` allows: torch.nn classes, pure
    math functions, classes defined in files under ``import_paths`` or the current directory, and the
    ``MODULE.NAME`` globals in ``allow_globals``; anything else is refused before any object is built.
    ``sys.path`` is restored afterwards. Raises :class:`LoadError` for a missing, unreadable, corrupt,
    unsafe or unrecognised file, a strict-load mismatch, complex weights, or weights with NaN/Inf.
    ``generator`` says which network, latent space and truncation to export from a generator file
    (:class:`~modconv_export.load.options.GeneratorOptions`); other files refuse anything but the default.
    An NVlabs network pickle needs no ``trust_pickle`` (nothing in it runs) but its checkout in ``import_paths``.
    """
    generator = generator or GeneratorOptions()
    path = Path(path).expanduser()
    with open_regular(path) as f:
        fmt = sniff(f, path)
        try:
            if fmt == NVLABS:  # read as data whatever --trust-pickle says; honours the generator options
                loaded = from_nvlabs_pickle(f, path, import_paths, allow_globals, generator)
            else:
                loaded = _read(f, path, fmt, trust_pickle, import_paths, allow_globals)
                refused = generator.refusal(loaded.describe())
                if refused is not None:
                    raise LoadError(f"{path}: {refused}")
        except RecursionError:  # nested deeper than the scan could see (built through the memo): walking it failed
            raise LoadError(f"{path}: is malformed: its data nests too deeply to be read") from None
    loaded.module.eval()
    loaded.path = path
    check_weights(loaded.module, path)
    return loaded


def _read(
    f: IO[bytes], path: Path, fmt: str, trust_pickle: bool, import_paths: Sequence[str | os.PathLike], allow_globals: Sequence[str]
) -> LoadedModel:
    obj, refusal = load_weights_only(f, path, fmt)
    if refusal is None:
        return from_data(obj, path)
    if not trust_pickle:
        raise LoadError(
            f"{path}: {refusal}: it holds pickled Python objects and loading it would run code; "
            "if you trust its source, re-run with --trust-pickle (Python: trust_pickle=True)"
        )
    return from_trusted_pickle(f, path, fmt, import_paths, allow_globals)


def check_weights(module: nn.Module, path: Path) -> None:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    check_real(tensors, path)
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
        raise LoadError(f"{path}: weights contain NaN/Inf: {listing(bad)}")
