"""The load stage: a model file -> an eval-mode module with the original (unrewritten) layers.

These kinds of file are accepted:

* a toolkit checkpoint (:mod:`modconv_export.load.checkpoint`): its family builds the model, strictly;
* a ``state_dict`` of a registered family, recognised by its keys -- bare, nested in a training checkpoint
  (``g_ema``, ``params_ema``; ``--network``, ``--state-dict-key``) or under a key prefix (pSp's
  ``decoder.``), found by :mod:`.selection` -- loaded strictly (:mod:`.state_dicts`); generator families
  honour :class:`~.options.GeneratorOptions`;
* any ``state_dict`` with ``arch``: loaded into the class the user names (:mod:`.arch`);
* a pickled ``nn.Module`` (``torch.save(model)``), only with ``trust_pickle=True``: unpickling runs code.
  One of a generator family is rebuilt from its weights by the family;
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn as nn

from .._util import forward_parameters
from ..errors import LoadError, ModconvExportError
from ..families import recognize
from .arch import from_arch
from .files import NVLABS, open_regular, sniff
from .loaded import LoadedModel
from .nvlabs import from_nvlabs_pickle
from .options import GeneratorOptions
from .pickled import from_trusted_pickle, load_weights_only
from .state_dicts import check_real, from_data, listing, load_family

__all__ = ["LoadedModel", "forward_parameters", "load_model"]


def load_model(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    import_paths: Sequence[str | os.PathLike] = (),
    allow_globals: Sequence[str] = (),
    generator: GeneratorOptions | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    state_dict_key: str | None = None,
) -> LoadedModel:
    """Load a toolkit checkpoint, a family state_dict or (with ``trust_pickle``) a pickled module.

    A pickled module may use only what :mod:`modconv_export.load.allowlist` allows: torch.nn classes, pure
    math functions, classes defined in files under ``import_paths`` or the current directory, and the
    ``MODULE.NAME`` globals in ``allow_globals``; anything else is refused before any object is built.
    ``sys.path`` is restored afterwards. Raises :class:`LoadError` for a missing, unreadable, corrupt,
    unsafe or unrecognised file, a strict-load mismatch, complex weights, or weights with NaN/Inf.
    ``generator`` says which network, latent space and truncation to export from a generator file
    (:class:`~modconv_export.load.options.GeneratorOptions`); files of other families refuse anything but the
    default. ``state_dict_key`` picks the state_dict (``"g_ema"``; dotted: ``"state_dict.decoder"`` is the keys
    under ``decoder.`` of the ``state_dict`` entry). ``arch`` (``"model.py:Generator"`` or ``"module:Class"``,
    trusted code) is the class the state_dict loads into, built with ``arch_kwargs`` (:mod:`.arch`).
    An NVlabs network pickle needs no ``trust_pickle`` (nothing in it runs) but its checkout in ``import_paths``.
    """
    generator = generator or GeneratorOptions()
    path = Path(path).expanduser()
    if arch is None and arch_kwargs:
        raise LoadError("--arch-kwargs needs --arch (the class they are passed to)")
    if arch is not None and (generator.latent != "z" or generator.truncation is not None):
        raise LoadError(f"{GeneratorOptions(latent=generator.latent, truncation=generator.truncation).flags()} apply to the generator "
                        "families the toolkit builds; with --arch the class's forward decides what is exported (a wrapper class can)")  # fmt: skip
    with open_regular(path) as f:
        fmt = sniff(f, path)
        try:
            if fmt == NVLABS:  # read as data whatever --trust-pickle says; honours the generator options
                if arch is not None or state_dict_key is not None:
                    raise LoadError(f"{path}: is an NVlabs network pickle, restored from its checkout (--import-path): "
                                    "--arch and --state-dict-key apply to state_dicts")  # fmt: skip
                loaded = from_nvlabs_pickle(f, path, import_paths, allow_globals, generator)
            else:
                loaded = _read(f, path, fmt, trust_pickle, import_paths, allow_globals, generator, arch, arch_kwargs, state_dict_key)
        except RecursionError:  # nested deeper than the scan could see (built through the memo): walking it failed
            raise LoadError(f"{path}: is malformed: its data nests too deeply to be read") from None
    loaded.module.eval()
    loaded.path = path
    check_weights(loaded.module, path)
    return loaded


def _read(
    f: IO[bytes],
    path: Path,
    fmt: str,
    trust_pickle: bool,
    import_paths: Sequence[str | os.PathLike],
    allow_globals: Sequence[str],
    generator: GeneratorOptions,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    state_dict_key: str | None,
) -> LoadedModel:
    """A ``torch.save`` file: data (a checkpoint or a state_dict, into a family or ``arch``), or a trusted pickle."""
    obj, refusal = load_weights_only(f, path, fmt)
    if refusal is None:
        return _from_data(obj, path, generator, arch, arch_kwargs, state_dict_key, import_paths)
    if not trust_pickle or arch is not None:
        raise LoadError(
            f"{path}: {refusal}: it holds pickled Python objects and loading it would run code; "
            + ("--arch loads a state_dict, not a pickled model" if arch is not None and trust_pickle else
               "if you trust its source, re-run with --trust-pickle (Python: trust_pickle=True)")
        )  # fmt: skip
    return _from_pickle(f, path, fmt, import_paths, allow_globals, generator, state_dict_key)


def _from_data(
    obj: Any,
    path: Path,
    generator: GeneratorOptions,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    state_dict_key: str | None,
    import_paths: Sequence[str | os.PathLike],
) -> LoadedModel:
    if arch is None:
        return from_data(obj, path, generator, state_dict_key)
    return from_arch(
        obj, path, arch, arch_kwargs or {}, network=generator.network, state_dict_key=state_dict_key, import_paths=import_paths
    )


def _from_pickle(
    f: IO[bytes],
    path: Path,
    fmt: str,
    import_paths: Sequence[str | os.PathLike],
    allow_globals: Sequence[str],
    generator: GeneratorOptions,
    state_dict_key: str | None,
) -> LoadedModel:
    if state_dict_key is not None:
        raise LoadError(f"{path}: --state-dict-key picks a state_dict of a data file; this file is a pickled module")
    loaded = from_trusted_pickle(f, path, fmt, import_paths, allow_globals)
    rebuilt = rebuilt_generator(loaded, path, generator) if loaded.kind == "pickle" else None
    if rebuilt is not None:
        return rebuilt
    refused = generator.refusal(loaded.describe())
    if refused is not None:
        raise LoadError(f"{path}: {refused}")
    return loaded


def rebuilt_generator(loaded: LoadedModel, path: Path, generator: GeneratorOptions) -> LoadedModel | None:
    """A pickled module whose weights are a generator family's, rebuilt from them by the family: upstream's forward
    takes lists and returns tuples, and ``--latent`` / ``--truncation`` are the family's (rosinality's ``torch.save(g_ema)``)."""
    state = loaded.module.state_dict()
    try:
        family = recognize(state)
    except ModconvExportError:
        return None
    if family.generator is None or generator.network is not None:
        return None
    return load_family(family, state, None, path, generator, {}, kind="pickle", where="rebuilt from its weights")


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
