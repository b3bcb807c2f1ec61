"""NVlabs generators (StyleGAN2-ADA, StyleGAN3) as their exported files present them: inputs, output, meanings.

Not a registered family: an NVlabs network is restored from its pickle with the classes of the user's
checkout (:mod:`modconv_export.load.nvlabs`), never built from a bare state_dict, so :func:`recognize` never
offers it. :func:`nvlabs_family` describes one exported configuration with the names every generator loader
uses (:mod:`modconv_export.load.options`): ``z`` [B, z_dim] and, for class-conditional models, ``c`` [B, c_dim]
(mapping + synthesis); or ``ws`` [B, num_ws, w_dim] (synthesis alone); ``truncation_psi`` [B] when ψ is an input;
the output ``image`` [B, C, H, W] in NVlabs' range [-1, 1], with ``noise_mode='const'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .registry import Family, InputSpec, TensorInfo

__all__ = ["NAME", "input_names", "inputs", "nvlabs_family", "one_hot_classes"]

NAME = "nvlabs"
_TENSORS = {
    "z": TensorInfo("latent code, standard normal (NVlabs: torch.randn([B, z_dim]))", "NC"),
    "c": TensorInfo("class label, one-hot over the model's c_dim classes", "NC"),
    "ws": TensorInfo("W+ latents, one w per synthesis layer (what G.mapping returns; what inversion and editing produce)", "NLC"),
    "truncation_psi": TensorInfo("truncation psi per sample: ws = w_avg + psi * (ws - w_avg); 1 = no truncation", "N"),
}


def one_hot_classes(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """``c`` as NVlabs' conditional models are trained on: one-hot rows of random classes."""
    batch, classes = shape
    return torch.nn.functional.one_hot(torch.randint(classes, (batch,), generator=gen), classes).float()


def _psi(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return 0.4 + 0.6 * torch.rand(shape, generator=gen)


def input_names(config: Mapping[str, Any]) -> list[str]:
    latents = ["z", "c"] if config["latent"] == "z" and config["c_dim"] > 0 else ["z"] if config["latent"] == "z" else ["ws"]
    return latents + (["truncation_psi"] if config.get("truncation") == "input" else [])


def inputs(config: Mapping[str, Any]) -> list[InputSpec]:
    """Example inputs in forward order (``ws`` standard normal here; the loader offers mapped ones)."""
    shapes = {"z": (1, config["z_dim"]), "c": (1, config["c_dim"]), "ws": (1, config["num_ws"], config["w_dim"]), "truncation_psi": (1,)}
    makes = {"c": one_hot_classes, "truncation_psi": _psi}
    return [InputSpec(n, shapes[n], make=makes.get(n)) for n in input_names(config)]


def _image(config: Mapping[str, Any]) -> TensorInfo:
    psi = config.get("truncation")
    details = {"noise_mode": "const", "truncation_psi": 1.0 if psi is None else psi, "network": config.get("network")}
    return TensorInfo("generated image in NVlabs' range: (image + 1) * 127.5 gives 8-bit RGB", "NCHW", (-1.0, 1.0), details)


def _from_checkout(*_: Any) -> Any:
    raise ValueError("an NVlabs generator is restored from its pickle with the user's checkout (modconv_export.load), not built here")


def nvlabs_family(config: Mapping[str, Any]) -> Family:
    """The (unregistered) family value of one exported NVlabs configuration: its inputs, output and their meanings."""
    tensors = {n: _TENSORS[n] for n in input_names(config)}
    tensors["image"] = _image(config)
    return Family(
        name=NAME,
        description="NVlabs network pickle (StyleGAN2-ADA, StyleGAN3), restored with the classes of the user's checkout",
        key_patterns=(r"^mapping\.", r"^synthesis\."),
        infer_config=_from_checkout,
        build=_from_checkout,
        inputs=inputs,
        outputs=("image",),
        tensors=tensors,
    )
