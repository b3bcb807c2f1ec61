"""NVlabs-format network pickles for the tests, written the way NVlabs' training loop writes its snapshots.

The networks come from ``tests/fixtures/nvlabs_format`` (test code in NVlabs' checkout layout, with the same
persistence protocol): ``snapshot`` builds ``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}`` with
``copy.deepcopy(module).eval().requires_grad_(False).cpu()`` and ``write`` is ``pickle.dump``. Hostile variants
are written by :func:`write` too: any :mod:`pickle_payloads` expression in the object becomes raw opcodes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from helpers import FIXTURES
from pickle_payloads import Build, Call, Expr, G, NewObj, Persistent, StackGlobal, emit

FORMAT = FIXTURES / "nvlabs_format"
#: NVlabs' checkouts and this fixture define the same top-level packages: one of them is imported at a time.
PACKAGES = ("training", "torch_utils", "dnnlib")


def forget_packages(keep: Path | None = None) -> None:
    """Drop imported ``training`` / ``torch_utils`` / ``dnnlib`` modules that do not come from ``keep``."""
    for name in list(sys.modules):
        file = getattr(sys.modules[name], "__file__", None) or ""
        if name.split(".")[0] in PACKAGES and (keep is None or not Path(file).resolve().is_relative_to(keep.resolve())):
            del sys.modules[name]


@contextlib.contextmanager
def packages_set_aside() -> Iterator[None]:
    """No ``training`` / ``torch_utils`` / ``dnnlib`` imported inside (so another copy can be); afterwards the
    modules imported before are back (the networks built from them still pickle)."""
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in PACKAGES}
    forget_packages()
    try:
        yield
    finally:
        forget_packages()
        sys.modules.update(saved)


@contextlib.contextmanager
def fixture_on_path() -> Iterator[Any]:
    """The fixture checkout imported (and first on ``sys.path``); yields its ``training.tiny_networks``."""
    forget_packages(FORMAT)
    sys.path.insert(0, str(FORMAT))
    try:
        from training import tiny_networks

        yield tiny_networks
    finally:
        sys.path.remove(str(FORMAT))


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give biases, noise strengths and ``w_avg`` random values (they start at constants that hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith(("bias", "noise_strength", "w_avg")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def snapshot(c_dim: int = 0, resolution: int = 16, seed: int = 0) -> dict:
    """A training snapshot of the fixture's networks, as NVlabs' training loop assembles one."""
    with fixture_on_path() as nets:
        import dnnlib

        torch.manual_seed(seed)
        common = dict(c_dim=c_dim, img_resolution=resolution, img_channels=3)
        G = randomized(nets.Generator(z_dim=16, w_dim=16, mapping_kwargs=dnnlib.EasyDict(num_layers=2), channels=8, **common), seed)
        D = nets.Discriminator(**common)
        G_ema = randomized(copy.deepcopy(G), seed + 1).eval()
        kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path="data.zip", use_labels=bool(c_dim))
        data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs=dict(kwargs))
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        return data


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing expressions as raw opcodes whose operands it pickles itself (so an
    expression may hold real networks and tensors)."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if not isinstance(obj, Expr):
            return super().save(obj, save_persistent_id)
        if isinstance(obj, G):
            return self.write(emit(obj))
        operands, opcode = {
            Call: ((lambda e: (e.fn, tuple(e.args))), b"R"),
            StackGlobal: ((lambda e: (e.module, e.name)), b"\x93"),
            Build: ((lambda e: (e.obj, e.state)), b"b"),
            NewObj: ((lambda e: (e.cls, tuple(e.args))), b"\x81"),
            Persistent: ((lambda e: (e.pid,)), b"Q"),
        }[type(obj)]
        for operand in operands(obj):
            self.save(operand)
        self.write(opcode)


def persisted(network: torch.nn.Module, **meta: Any) -> Call:
    """``network`` as its persistence call, with fields of ``meta`` replaced (``module_src=...``, ``state=...``)."""
    fields = dict(type="class", version=6, module_src=network._module_source, class_name=type(network).__name__, state=network.__dict__)
    return Call(G("torch_utils.persistence", "_reconstruct_persistent_obj"), {**fields, **meta})


def dumps(obj: Any, protocol: int = 4) -> bytes:
    """``pickle.dumps(obj)`` with the fixture's classes importable; expressions in ``obj`` written as opcodes."""
    buffer = io.BytesIO()
    with fixture_on_path():
        if any(isinstance(v, Expr) for v in _walk(obj)):
            _Pickler(buffer, protocol).dump(obj)
        else:
            pickle.dump(obj, buffer, protocol=protocol)
    return buffer.getvalue()


def write(path: Path, obj: Any, protocol: int = 4) -> Path:
    path.write_bytes(dumps(obj, protocol))
    return path


def _walk(obj: Any, depth: int = 0) -> Iterator[Any]:
    yield obj
    if depth > 30:
        return
    items = (
        obj.values()
        if isinstance(obj, dict)
        else obj
        if isinstance(obj, (list, tuple))
        else vars(obj).values()
        if isinstance(obj, torch.nn.Module)
        else ()
    )
    for item in items:
        yield from _walk(item, depth + 1)


def reference(G: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """NVlabs' deterministic call: ``G(z, c, ..., noise_mode='const', force_fp32=True)``."""
    with torch.no_grad():
        return G(*args, noise_mode="const", force_fp32=True, **kwargs)
