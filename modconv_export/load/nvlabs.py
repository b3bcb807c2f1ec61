"""NVlabs network pickles (StyleGAN2-ADA, StyleGAN3): read as data, restored with the user's checkout, never run.

``network-snapshot-*.pkl``, ``ffhq.pkl`` and the like are a plain ``pickle.dump`` of ``{'G', 'D', 'G_ema',
'augment_pipe', 'training_set_kwargs'}`` whose networks are ``torch_utils.persistence`` objects carrying their
module's source code. Reading one:

1. every global the file names is listed with :mod:`pickletools` (nothing built; each declared length is
   checked against the file's size) and decided -- the persistence protocol and ``dnnlib.EasyDict``
   (:mod:`.persistence`) and how ``pickle.dump`` writes tensors (:mod:`.plain_pickle`) are data, anything else
   is what :mod:`.allowlist` allows; one refusal refuses the file before any object is built;
2. the file is unpickled by :class:`~.plain_pickle.RestrictedUnpickler` with exactly those values: a network is
   now a :class:`~.persistence.PersistentRecord`, its tensors are checked, nothing has run;
3. without ``--import-path`` that is where it ends, in one line saying what the file holds and what to pass;
4. the chosen network (``G_ema`` unless ``--network``) is restored from the checkout's classes
   (:class:`~.checkout.Checkout`, strictly) and wrapped as :class:`~modconv_export.layers.nvlabs.NVlabsGenerator`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from pickle import UnpicklingError
from typing import IO, Any

import torch
import torch.nn as nn

from .._util import exception_line
from .._util.memory import is_allocation_failure
from ..errors import LoadError
from ..families import InputSpec
from ..families.nvlabs import nvlabs_family, one_hot_classes
from ..layers.nvlabs import NVlabsGenerator
from .allowlist import OUTSIDE, Decision, decide, resolve_allowed
from .checkout import Checkout
from .class_guard import for_python_unpickler, restore_classes
from .loaded import LoadedModel
from .options import GeneratorOptions
from .persistence import PERSISTENCE_GLOBALS, PersistentRecord
from .pickle_scan import TooDeep, pickle_globals
from .plain_pickle import DATA_GLOBALS, RestrictedUnpickler

__all__ = ["DEFAULT_NETWORK", "from_nvlabs_pickle", "read_nvlabs_pickle"]

#: What NVlabs' generate scripts use.
DEFAULT_NETWORK = "G_ema"
#: The generator attributes read from a restored network (ints the file states), with their upper bounds.
_DIMENSIONS = {"z_dim": 1 << 16, "c_dim": 1 << 20, "w_dim": 1 << 16, "num_ws": 1 << 10, "img_resolution": 1 << 16, "img_channels": 64}


def _decide(name: str, dirs: Sequence[Path], allowed: dict[str, Any]) -> Decision:
    if name in PERSISTENCE_GLOBALS:
        return Decision(name, PERSISTENCE_GLOBALS[name])
    if name in DATA_GLOBALS:
        return Decision(name, DATA_GLOBALS[name])
    decision = decide(name, dirs, allowed)
    return Decision(name, for_python_unpickler(decision.value), decision.refused)


def read_nvlabs_pickle(f: IO[bytes], path: Path, dirs: Sequence[Path], allowed: dict[str, Any]) -> Any:
    """The file's object, with every persistence object a record (nothing from the file or the checkout has run)."""
    try:
        names = pickle_globals(f, os.fstat(f.fileno()).st_size)
    except TooDeep as exc:
        raise LoadError(f"{path}: is malformed: {exc} (refused before unpickling)") from None
    except ValueError as exc:
        raise LoadError(f"{path}: is truncated or corrupt (pickle data unreadable: {exc})") from None
    decisions = [_decide(name, dirs, allowed) for name in names]
    refused = [d for d in decisions if d.refused]
    if refused:
        listed = ", ".join(d.name + ("" if d.refused == OUTSIDE else f" ({d.refused})") for d in refused[:5])
        raise LoadError(f"{path}: refused: this NVlabs network pickle needs globals outside the allowlist: {listed}"
                        f"{f' (+{len(refused) - 5} more)' if len(refused) > 5 else ''}")  # fmt: skip
    try:
        obj = RestrictedUnpickler(f, {d.name: d.value for d in decisions}).load()
    except UnpicklingError as exc:
        raise LoadError(f"{path}: refused: {exception_line(exc).removeprefix('UnpicklingError: ')}") from exc
    except Exception as exc:  # damaged bytes fail the unpickler in many ways
        if is_allocation_failure(exc):
            raise
        raise LoadError(f"{path}: is truncated or corrupt ({exception_line(exc)})") from exc
    try:
        return restore_classes(obj)
    except RecursionError:
        raise LoadError(f"{path}: nests data too deeply to be a network") from None


def _networks(obj: Any) -> dict[str, PersistentRecord]:
    if isinstance(obj, PersistentRecord):
        return {"": obj}
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, PersistentRecord)}
    return {}


def _listing(networks: dict[str, PersistentRecord]) -> str:
    return ", ".join(f"{name}: {record.class_name}" if name else record.class_name for name, record in networks.items())


def _choose(networks: dict[str, PersistentRecord], wanted: str | None, path: Path) -> tuple[str, PersistentRecord]:
    if "" in networks:  # the file is one pickled network
        if wanted is not None:
            raise LoadError(f"{path}: holds a single network ({networks[''].class_name}); drop --network {wanted}")
        return networks[""].class_name, networks[""]
    name = wanted or DEFAULT_NETWORK
    if name not in networks:
        hint = f"; pass --network {next(iter(networks))}" if wanted is None else ""
        raise LoadError(f"{path}: holds no network {name!r} (it holds {_listing(networks)}){hint}")
    return name, networks[name]


def _dimensions(network: nn.Module, where: str, path: Path) -> dict[str, int]:
    """The generator's sizes, checked: a generator has mapping and synthesis networks and these ints."""
    modules = getattr(network, "_modules", {})
    if (
        not isinstance(network, nn.Module)
        or not isinstance(modules.get("mapping"), nn.Module)
        or not isinstance(modules.get("synthesis"), nn.Module)
    ):
        raise LoadError(f"{path}: {where} is a {type(network).__name__}, not a generator (a network with mapping and synthesis networks)")
    sizes = {}
    for name, top in _DIMENSIONS.items():
        value = vars(network).get(name)
        if type(value) is not int or not 0 <= value <= top:
            raise LoadError(f"{path}: {where}.{name} is {value!r}, not a size between 0 and {top}")
        sizes[name] = value
    return sizes


def _mapped_ws(network: nn.Module, config: dict) -> InputSpec:
    """``ws`` examples as the mapping network makes them (two z per sample, mixed half way, as style mixing does)."""
    mapping: Any = network.mapping
    z_dim, c_dim, num_ws = config["z_dim"], config["c_dim"], config["num_ws"]

    def make(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        batch = shape[0]
        c = one_hot_classes((batch, c_dim), gen) if c_dim else None
        with torch.no_grad():
            first, second = (mapping(torch.randn(batch, z_dim, generator=gen), c) for _ in range(2))
        return torch.cat([first[:, : num_ws // 2], second[:, num_ws // 2 :]], dim=1).float()

    return InputSpec("ws", (1, num_ws, config["w_dim"]), make=make if z_dim else None)


def from_nvlabs_pickle(
    f: IO[bytes], path: Path, import_paths: Sequence[str | os.PathLike], allow_globals: Sequence[str], generator: GeneratorOptions
) -> LoadedModel:
    dirs = [Path(os.path.realpath(os.path.expanduser(p))) for p in import_paths]
    for given, d in zip(import_paths, dirs):
        if not d.is_dir():
            raise LoadError(f"--import-path {given}: not a directory")
    obj = read_nvlabs_pickle(f, path, dirs, resolve_allowed(allow_globals))
    networks = _networks(obj)
    if not networks:
        raise LoadError(f"{path}: names NVlabs' persistence protocol but holds no network (it holds a {type(obj).__name__})")
    if not dirs:
        raise LoadError(
            f"{path}: is an NVlabs network pickle ({_listing(networks)}) whose classes come from a StyleGAN2-ADA or StyleGAN3 "
            "checkout: pass --import-path <checkout> (e.g. --import-path ~/stylegan3); the code embedded in the file is never run"
        )
    name, record = _choose(networks, generator.network, path)
    checkout = Checkout(dirs, str(path))
    network = checkout.restore(record, name)
    sizes = _dimensions(network, name, path)
    if generator.latent == "z" and sizes["z_dim"] == 0:
        raise LoadError(f"{path}: {name} has no z (z_dim 0): export it with --latent w")
    if generator.truncation is not None and not isinstance(getattr(network.mapping, "w_avg", None), torch.Tensor):
        raise LoadError(f"{path}: --truncation needs {name}.mapping.w_avg, which this network does not track")
    config = {"network": name, "class": type(network).__name__, "latent": generator.latent, "truncation": generator.truncation, **sizes}
    module = NVlabsGenerator(network, latent=generator.latent, conditional=sizes["c_dim"] > 0, truncation=generator.truncation)
    family = nvlabs_family(config)
    specs = [_mapped_ws(network, config) if spec.name == "ws" else spec for spec in family.inputs(config)]
    return LoadedModel(module, "nvlabs", family, config, specs, notes=checkout.notes())
