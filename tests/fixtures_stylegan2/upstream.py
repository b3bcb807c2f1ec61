"""Load the real upstream architecture files (GFPGAN 1.3.8, basicsr 1.4.2) from their PyPI archives.

The packages do not import cleanly (basicsr imports torchvision's removed ``functional_tensor`` and
needs compiled CUDA ops), so nothing is installed: the few ``.py`` files are read out of the archives
and executed by path with their imports satisfied by small shims that exist only while they load:

* ``basicsr.utils.registry.ARCH_REGISTRY`` -> a registry whose ``register()`` does nothing;
* ``basicsr.archs.arch_util.default_init_weights`` -> our copy of its documented initialisation;
* ``basicsr.ops.upfirdn2d.upfirdn2d`` -> basicsr's own ``upfirdn2d.py`` (its CPU path is pure torch);
* ``basicsr.ops.fused_act`` -> our CPU reference (:mod:`.reference_ops`); basicsr's has no CPU code.
  basicsr's real ``fused_act.py`` is loaded too (:func:`load_upstream` ``["fused_act"]``).

Archives are looked up in ``$MODCONV_UPSTREAM_DIR``, else ``<repo>/.ci/cache/upstream``; get them with
``pip download --no-deps gfpgan==1.3.8 basicsr==1.4.2 -d <dir>``. Their SHA-256 is checked. Tests
that need them skip with the reason when they are absent, unless ``MODCONV_REQUIRE_UPSTREAM=1``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tarfile
import tempfile
import types
import zipfile
from pathlib import Path
from unittest import mock

import torch.nn as nn
from torch.nn import init

from . import reference_ops

ENV = "MODCONV_UPSTREAM_DIR"
REQUIRE_ENV = "MODCONV_REQUIRE_UPSTREAM"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".ci" / "cache" / "upstream"
ARCHIVES = {
    "gfpgan-1.3.8-py3-none-any.whl": "3d8386df6320aa9dfb0dd4cd09d9f8ed12ae0bbd9b2df257c3d21aefac5d8b85",
    "basicsr-1.4.2.tar.gz": "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87",
}
MEMBERS = {
    "stylegan2_clean_arch": ("gfpgan-1.3.8-py3-none-any.whl", "gfpgan/archs/stylegan2_clean_arch.py"),
    "gfpganv1_clean_arch": ("gfpgan-1.3.8-py3-none-any.whl", "gfpgan/archs/gfpganv1_clean_arch.py"),
    "stylegan2_arch": ("basicsr-1.4.2.tar.gz", "basicsr-1.4.2/basicsr/archs/stylegan2_arch.py"),
    "upfirdn2d": ("basicsr-1.4.2.tar.gz", "basicsr-1.4.2/basicsr/ops/upfirdn2d/upfirdn2d.py"),
    "fused_act": ("basicsr-1.4.2.tar.gz", "basicsr-1.4.2/basicsr/ops/fused_act/fused_act.py"),
}
_PACKAGE = "_modconv_upstream"  # private package name the loaded files live under


def archive_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_DIR)


def missing_reason() -> str | None:
    """Why the upstream files cannot be loaded here (for ``pytest.skip``), or ``None``.

    With ``MODCONV_REQUIRE_UPSTREAM=1`` (CI, after downloading them) a missing archive is an error.
    """
    folder = archive_dir()
    reason = None
    for name, digest in ARCHIVES.items():
        path = folder / name
        if not path.is_file():
            reason = f"{name} not found in {folder} (set {ENV}, or: pip download --no-deps gfpgan==1.3.8 basicsr==1.4.2 -d {folder})"
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            reason = f"{path} is not the published {name} (SHA-256 differs)"
        if reason:
            break
    if reason and os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        raise RuntimeError(f"{REQUIRE_ENV} is set but {reason}")
    return reason


def _read(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        return tf.extractfile(member).read()


def _default_init_weights(module_list, scale=1, bias_fill=0, **kwargs):
    """basicsr's documented init: kaiming-normal weights times ``scale``, biases ``bias_fill``."""
    modules = module_list if isinstance(module_list, list) else [module_list]
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init.kaiming_normal_(m.weight, **kwargs)
                m.weight.data *= scale
                if m.bias is not None:
                    m.bias.data.fill_(bias_fill)


class _NoRegistry:
    def register(self, obj=None):
        return (lambda o: o) if obj is None else obj


def _package(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attrs)
    return module


def _exec(name: str, path: Path, package: str | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if package is not None:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def load_upstream() -> dict[str, types.ModuleType]:
    """The upstream modules by short name (see ``MEMBERS``); call only when :func:`missing_reason` is None."""
    reason = missing_reason()
    if reason:
        raise FileNotFoundError(reason)
    folder = Path(tempfile.mkdtemp(prefix="modconv_upstream_"))
    paths = {}
    for short, (archive, member) in MEMBERS.items():
        paths[short] = folder / f"{short}.py"
        paths[short].write_bytes(_read(archive_dir() / archive, member))
    sys.modules[_PACKAGE] = _package(_PACKAGE)
    loaded = {"upfirdn2d": _exec(f"{_PACKAGE}.upfirdn2d", paths["upfirdn2d"]), "fused_act": _exec(f"{_PACKAGE}.fused_act", paths["fused_act"])}
    shims = {
        "basicsr": _package("basicsr"),
        "basicsr.archs": _package("basicsr.archs"),
        "basicsr.archs.arch_util": _package("basicsr.archs.arch_util", default_init_weights=_default_init_weights),
        "basicsr.utils": _package("basicsr.utils"),
        "basicsr.utils.registry": _package("basicsr.utils.registry", ARCH_REGISTRY=_NoRegistry()),
        "basicsr.ops": _package("basicsr.ops"),
        "basicsr.ops.upfirdn2d": _package("basicsr.ops.upfirdn2d", upfirdn2d=loaded["upfirdn2d"].upfirdn2d),
        "basicsr.ops.fused_act": _package(
            "basicsr.ops.fused_act", FusedLeakyReLU=reference_ops.FusedLeakyReLU, fused_leaky_relu=reference_ops.fused_leaky_relu
        ),
    }
    with mock.patch.dict(sys.modules, shims):
        for short in ("stylegan2_clean_arch", "gfpganv1_clean_arch", "stylegan2_arch"):
            loaded[short] = _exec(f"{_PACKAGE}.{short}", paths[short], package=_PACKAGE)
    return loaded
