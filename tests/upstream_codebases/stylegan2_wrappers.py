"""Reduced-size generators from upstream StyleGAN2 checkouts, one tensor in and one image out.

Test code only: it imports upstream code from checkouts named by environment variables (never
committed here) and makes their calling conventions plain. Importable top-level from this directory,
so ``torch.save`` pickles of these wrappers load with ``--trust-pickle --import-path <this dir>
--import-path <checkout>``.

* ``MODCONV_UPSTREAM_ROSINALITY``: rosinality/stylegan2-pytorch at bef283a1c24087da704d16c30abc8e36e63efa0e.
  Its ``op`` package builds CUDA extensions when imported; the build is stubbed out here (on the CPU the
  package runs its native PyTorch code, ``upfirdn2d_native`` and ``fused_leaky_relu``'s CPU branch).
* ``MODCONV_UPSTREAM_NVLABS``: NVlabs/stylegan2-ada-pytorch at d72cc7d041b42ec8e806021a205ed9349f87c6a4
  (StyleGAN3's ``networks_stylegan2`` is the same code). ``dnnlib`` imports ``requests`` for downloads,
  which is stubbed when absent; on the CPU its ops run their reference implementations.
* ``MODCONV_UPSTREAM_STYLEGAN3``: NVlabs/stylegan3 at c233a919a6faee6e36a316ddd4eddababad1adf9, its
  ``networks_stylegan3`` generator (needs scipy; ``pkg_resources.parse_version`` is stood in for by
  ``packaging`` where setuptools is absent). It normalises the styles over the whole batch.
"""

from __future__ import annotations

import os
import sys
import types

import torch
import torch.nn as nn

ROSINALITY_ENV, NVLABS_ENV, STYLEGAN3_ENV = "MODCONV_UPSTREAM_ROSINALITY", "MODCONV_UPSTREAM_NVLABS", "MODCONV_UPSTREAM_STYLEGAN3"


#: Top-level packages NVlabs' two repositories both define: a process may use one checkout at a time.
_NVLABS_PACKAGES = ("training", "torch_utils", "dnnlib")


def _on_path(env: str) -> None:
    """Put the checkout ``env`` names first on ``sys.path``, forgetting same-named packages of another one."""
    install_stubs()
    root = os.environ.get(env)
    if not root:
        raise RuntimeError(f"set {env} to the upstream checkout")
    for name in list(sys.modules):
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if name.split(".")[0] in _NVLABS_PACKAGES and not module_file.startswith(os.path.realpath(root)):
            del sys.modules[name]
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)


def _stub_extension_builds() -> None:
    """rosinality's ``op`` package compiles CUDA kernels when imported; on the CPU it never calls them."""
    import torch.utils.cpp_extension as cpp_extension

    cpp_extension.load = lambda *args, **kwargs: types.SimpleNamespace()


def _stub_requests() -> None:
    """NVlabs' ``dnnlib`` imports ``requests`` (for downloads only); a stand-in where it is absent."""
    try:
        import requests  # noqa: F401
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")


def _stub_pkg_resources() -> None:
    """StyleGAN3's ``conv2d_gradfix`` reads ``pkg_resources.parse_version`` (setuptools), absent on new Pythons."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
        sys.modules["pkg_resources"].parse_version = parse


def install_stubs() -> None:
    """The import-time stand-ins above, for a process that is about to import upstream code (called by the
    builders below, and by the ``sitecustomize`` a command-line test gives its subprocess: unpickling a
    wrapper imports upstream modules before any builder runs). Never on import, so that merely collecting
    these tests changes nothing for the others."""
    _stub_extension_builds()
    _stub_requests()
    _stub_pkg_resources()


def rosinality():
    """The rosinality ``model`` module (its CUDA extension builds are stubbed out)."""
    _on_path(ROSINALITY_ENV)
    import model

    return model


def nvlabs():
    """NVlabs' ``training.networks`` module (``requests`` stubbed when it is not installed)."""
    _on_path(NVLABS_ENV)
    from training import networks

    return networks


class RosinalityGenerator(nn.Module):
    """``Generator([z], randomize_noise=False)[0]``: the generator's own fixed noise buffers."""

    def __init__(self, size: int = 32, style_dim: int = 64, n_mlp: int = 2) -> None:
        super().__init__()
        self.generator = rosinality().Generator(size, style_dim, n_mlp, channel_multiplier=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator([z], randomize_noise=False)[0]


class NVlabsGenerator(nn.Module):
    """``Generator(z, c=None, noise_mode='const')`` with ``c_dim=0``, narrowed to 64 channels."""

    def __init__(self, resolution: int = 32, z_dim: int = 64) -> None:
        super().__init__()
        self.generator = nvlabs().Generator(
            z_dim=z_dim, c_dim=0, w_dim=z_dim, img_resolution=resolution, img_channels=3,
            mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 2048, "channel_max": 64, "num_fp16_res": 0},
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z, None, noise_mode="const")


class StyleGAN3Generator(nn.Module):
    """StyleGAN3-T ``Generator(z, c=None, noise_mode='const', force_fp32=True)``, four layers, 32 channels."""

    def __init__(self, resolution: int = 32, z_dim: int = 64) -> None:
        super().__init__()
        _on_path(STYLEGAN3_ENV)
        from training import networks_stylegan3

        self.generator = networks_stylegan3.Generator(
            z_dim=z_dim, c_dim=0, w_dim=z_dim, img_resolution=resolution, img_channels=3, mapping_kwargs={"num_layers": 2},
            channel_base=1024, channel_max=32, num_layers=4, num_critical=1, conv_kernel=3, use_radial_filters=False,
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z, None, noise_mode="const", force_fp32=True)


def randomize_biases(model: nn.Module, seed: int) -> nn.Module:
    """Upstream initialises biases and noise strengths to zero; random values make those paths count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.numel() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()
