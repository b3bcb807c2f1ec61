"""Export forms for the StyleGAN2 layers of GFPGAN (``stylegan2_clean_arch``) and basicsr (``stylegan2_arch``).

Both upstreams modulate the *weight* per sample and run one grouped convolution with ``groups = batch``
(basicsr also a grouped ``conv_transpose2d`` for upsampling), so no exporter keeps the batch dynamic.
As in :mod:`modconv_export.layers.seed_forms`, the modulation moves onto the input instead: convolution,
transposed convolution, bilinear resampling and FIR blurs are all linear per input channel, so

    conv(resample(x) * s, W) * d    and    smooth(conv_transpose(x * s, W^T) * d)

equal the upstream outputs while ``W`` stays a constant (``d = rsqrt(s^2 @ sum_k(W^2)^T + eps)``).

basicsr's CUDA-only ops get pure-torch equivalents: ``upfirdn2d`` becomes a (transposed) convolution
with the FIR kernel as a constant, and the fused bias + leaky ReLU becomes ``leaky_relu(x + b) * gain``.
Noise injection never draws random numbers here: see :class:`NoisyStyleConv`.
"""

from __future__ import annotations

import warnings
from math import sqrt

import torch
import torch.nn as nn
import torch.nn.functional as F

from .seed_forms import demodulation

__all__ = ["BiasLeakyReLU", "NoisyStyleConv", "ScaledLinear", "StyleGAN2ModulatedConvForm", "UpFirDn2d", "ZERO_NOISE_NOTE"]

#: What the rewrite report says about every noise-injecting layer (the CLI prints it).
ZERO_NOISE_NOTE = (
    "draws random noise when called without noise; the export form adds zero noise instead "
    "(pass noise explicitly to keep it: fixed buffers, e.g. upstream randomize_noise=False, or noise tensors as graph inputs)"
)


def _conv_params(crop_lo: int, crop_hi: int, stride: int) -> tuple[int, int, tuple[int, int]]:
    """For one axis: conv ``padding``/``output_padding`` and what is left to crop (negative: to pad)."""
    if crop_lo >= 0 and 0 <= crop_lo - crop_hi < stride:
        return crop_lo, crop_lo - crop_hi, (0, 0)
    common = max(0, min(crop_lo, crop_hi))
    return common, 0, (crop_lo - common, crop_hi - common)


class UpFirDn2d(nn.Module):
    """``upfirdn2d(x, kernel, up, down, pad)`` as one convolution with the FIR kernel as a constant.

    upfirdn2d inserts ``up - 1`` zeros after every sample, pads by ``pad = (lo, hi)`` on both axes,
    convolves with ``kernel`` (a true convolution) and keeps every ``down``-th sample. That is:

    * ``up > 1``: a transposed convolution with stride ``up`` and the kernel as it is, cropped by
      ``k - 1 - lo`` and ``k - up - hi``;
    * otherwise: a correlation with the flipped kernel, stride ``down``, after padding ``(lo, hi)``.

    With ``channels`` it is a depthwise 2-D convolution (``fir``: ``[C, 1, kh, kw]``). Without, the
    channel count is unknown at rewrite time, so the channels become the depth axis of a 3-D
    convolution with a ``[1, 1, 1, kh, kw]`` weight: still one Conv with a constant weight, with no
    reshape of the batch axis.
    """

    def __init__(
        self, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0), channels: int | None = None
    ) -> None:
        super().__init__()
        if kernel.dim() != 2:
            raise ValueError(f"upfirdn2d kernel must be 2-D, got shape {tuple(kernel.shape)}")
        if up < 1 or down < 1 or (up > 1 and down > 1):
            raise ValueError(f"need up >= 1, down >= 1 and not both > 1, got up={up}, down={down}")
        self.up, self.down, self.pad = int(up), int(down), (int(pad[0]), int(pad[1]))
        self.channels = None if channels is None else int(channels)
        self.register_buffer("kernel", kernel.detach().clone().float())
        lo, hi = self.pad
        axes = []  # (padding, output_padding, extra (lo, hi)) per spatial axis
        for k in kernel.shape:
            if self.up > 1:
                axes.append(_conv_params(k - 1 - lo, k - self.up - hi, self.up))
            else:
                common = max(0, min(lo, hi))
                axes.append((common, 0, (lo - common, hi - common)))
        self._padding = tuple(a[0] for a in axes)
        self._output_padding = tuple(a[1] for a in axes)
        # F.pad order: last axis first; for up > 1 these crop the output, otherwise they pad the input.
        extra = [axes[1][2][0], axes[1][2][1], axes[0][2][0], axes[0][2][1]]
        self._extra = [-e for e in extra] if self.up > 1 else extra
        weight = kernel.detach().float() if self.up > 1 else torch.flip(kernel.detach().float(), [0, 1])
        if self.channels is None:
            self.register_buffer("fir", weight.reshape(1, 1, 1, *weight.shape).clone())
        else:
            self.register_buffer("fir", weight.reshape(1, 1, *weight.shape).repeat(self.channels, 1, 1, 1))

    def for_channels(self, channels: int) -> UpFirDn2d:
        """The same operation as a depthwise 2-D convolution over ``channels`` channels."""
        return UpFirDn2d(self.kernel, self.up, self.down, self.pad, channels=channels)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            if self.up > 1:
                return F.conv_transpose3d(
                    x, self.fir, stride=(1, self.up, self.up), padding=(0, *self._padding), output_padding=(0, *self._output_padding)
                )
            return F.conv3d(x, self.fir, stride=(1, self.down, self.down), padding=(0, *self._padding))
        if self.up > 1:
            return F.conv_transpose2d(
                x, self.fir, stride=self.up, padding=self._padding, output_padding=self._output_padding, groups=self.channels
            )
        return F.conv2d(x, self.fir, stride=self.down, padding=self._padding, groups=self.channels)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input if self.channels is not None else input.unsqueeze(1)
        if self.up == 1 and any(self._extra):
            x = F.pad(x, self._extra)
        out = self._conv(x)
        if self.up > 1 and any(self._extra):
            out = F.pad(out, self._extra)
        return out if self.channels is not None else out.squeeze(1)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, up={self.up}, down={self.down}, pad={self.pad}, channels={self.channels}"


class BiasLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, negative_slope) * scale`` with the bias along axis 1: basicsr's
    ``fused_bias_act`` (``act=3``) CUDA kernel, in plain torch."""

    def __init__(self, bias: torch.Tensor | None, negative_slope: float = 0.2, scale: float = sqrt(2)) -> None:
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().reshape(-1).clone(), requires_grad=False)
        self.negative_slope = float(negative_slope)
        self.scale = float(scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            input = input + self.bias.reshape(1, -1, *([1] * (input.dim() - 2)))
        return F.leaky_relu(input, self.negative_slope) * self.scale

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, scale={self.scale:.6g}"


class ScaledLinear(nn.Module):
    """An equalized-learning-rate linear layer with its run-time scales folded into constants,
    optionally followed by the fused bias + leaky ReLU (which then adds the bias)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: BiasLeakyReLU | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None or activation is not None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = F.linear(input, self.weight, self.bias)
        return out if self.activation is None else self.activation(out)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


#: resample -> (how it runs). "up_transposed"/"down_strided" use ``smooth`` (basicsr's FIR blur).
MODES = ("same", "up_bilinear", "down_bilinear", "up_transposed", "down_strided")


class StyleGAN2ModulatedConvForm(nn.Module):
    """A StyleGAN2 modulated convolution (no bias) with a constant weight: the input is modulated.

    ``weight`` is ``[Cout, Cin, k, k]`` with every scale folded in; ``modulation`` maps the style to
    ``s`` (``[batch, Cin]``). Modes: ``same`` (stride 1, ``padding``), GFPGAN's bilinear ``up_bilinear``
    / ``down_bilinear`` before a stride-1 conv, basicsr's ``up_transposed`` (stride-2 transposed conv,
    then ``smooth``) and ``down_strided`` (``smooth``, then a stride-2 conv).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        modulation: nn.Module,
        *,
        demodulate: bool,
        eps: float,
        padding: int,
        mode: str = "same",
        smooth: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if (smooth is not None) != (mode in ("up_transposed", "down_strided")):
            raise ValueError(f"mode {mode!r} {'needs' if smooth is None else 'takes no'} smooth module")
        self.out_channels, self.in_channels, self.kernel_size = (int(n) for n in weight.shape[:3])
        self.demodulate, self.eps, self.padding, self.mode = bool(demodulate), float(eps), int(padding), mode
        weight = weight.detach()
        # conv_transpose2d wants [Cin, Cout, k, k]; the values are the same constants either way.
        stored = weight.transpose(0, 1) if mode == "up_transposed" else weight
        self.weight = nn.Parameter(stored.contiguous().clone(), requires_grad=False)
        self.register_buffer("weight_sq_sum_t", (weight.double() ** 2).sum(dim=(2, 3)).t().float().contiguous())
        self.modulation = modulation
        self.smooth = smooth

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        assert self.smooth is not None  # the constructor requires it for the modes that call this
        return self.smooth(x)

    def forward(self, input: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style).reshape(-1, self.in_channels)
        s4 = s.reshape(-1, self.in_channels, 1, 1)
        if self.mode == "up_bilinear":  # scale first: fewer pixels before upsampling
            x = F.interpolate(input * s4, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.mode == "down_bilinear":
            x = F.interpolate(input, scale_factor=0.5, mode="bilinear", align_corners=False) * s4
        elif self.mode == "down_strided":
            x = self._smooth(input) * s4
        else:
            x = input * s4
        if self.mode == "up_transposed":
            out = F.conv_transpose2d(x, self.weight, stride=2)
        elif self.mode == "down_strided":
            out = F.conv2d(x, self.weight, stride=2)
        else:
            out = F.conv2d(x, self.weight, padding=self.padding)
        if self.demodulate:
            out = out * demodulation(s, self.weight_sq_sum_t, self.eps).reshape(-1, self.out_channels, 1, 1)
        if self.mode == "up_transposed":
            out = self._smooth(out)
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, demodulate={self.demodulate}, mode={self.mode}"


class NoisyStyleConv(nn.Module):
    """StyleGAN2's ``StyleConv``: modulated conv, ``* gain``, ``+ weight * noise``, ``+ bias``, activation.

    Given noise is used exactly. Upstream draws ``N(0, 1)`` noise when none is given; an exported
    graph must not hide randomness, so here missing noise means *zero* noise (the distribution's
    mean), with a warning in eager mode and :data:`ZERO_NOISE_NOTE` in the rewrite report.
    """

    def __init__(
        self,
        modulated_conv: nn.Module,
        noise_weight: torch.Tensor,
        activate: nn.Module,
        *,
        gain: float = 1.0,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.modulated_conv = modulated_conv
        self.weight = nn.Parameter(noise_weight.detach().reshape(1).clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.activate = activate
        self.gain = float(gain)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style)
        if self.gain != 1.0:
            out = out * self.gain
        if noise is not None:
            out = out + self.weight * noise
        elif not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            warnings.warn(f"{type(self).__name__}: no noise given; using zero noise (upstream would draw random noise)", stacklevel=2)
        if self.bias is not None:
            out = out + self.bias
        return self.activate(out)

    def extra_repr(self) -> str:
        return f"gain={self.gain:.6g}, bias={self.bias is not None}, missing noise=zero"
