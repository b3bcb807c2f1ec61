"""Export forms: the layers :func:`modconv_export.make_exportable` puts in place of the seed layers.

The seed modulates the *weight* per sample and runs one grouped conv with ``groups = batch``; ONNX
``Conv.group`` is a static attribute, so no exporter can keep the batch dynamic. Here the *input* is
modulated instead. A per-channel scale ``s`` commutes with nearest/bilinear upsampling, the depthwise
blur and reflect/zero padding, so

    conv(pad(resample(x * s)), W) * d + bias,    d = rsqrt(s^2 @ sum_k(W^2)^T + eps)

equals the seed's output while ``W`` stays a constant: the graph has fixed weights at any batch size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops  # noqa: F401  (registers torch.ops.modconv_export.depthwise_conv2d)

__all__ = ["DepthwiseBlur", "InputModulatedConv2d", "demodulation"]


def demodulation(s: torch.Tensor, weight_sq_sum_t: torch.Tensor, eps: float) -> torch.Tensor:
    """``rsqrt(s^2 @ sum_k(W^2)^T + eps)``, always computed in float32.

    In float16, ``s^2`` summed over hundreds of input channels leaves the range (65504) and an ``eps``
    of 1e-5 or 1e-8 is below float16's normal (6e-5) or smallest (6e-8) value: exactly where NaN/Inf
    come from. It is vector work, negligible next to the convolutions. The caller casts the result to
    the feature maps' dtype.
    """
    s32 = s if s.dtype == torch.float32 else s.float()
    sq = weight_sq_sum_t if weight_sq_sum_t.dtype == torch.float32 else weight_sq_sum_t.float()
    return torch.rsqrt(torch.matmul(s32 * s32, sq) + eps)


class DepthwiseBlur(nn.Module):
    """A fixed per-channel blur: one depthwise convolution with a constant ``[C, 1, k, k]`` kernel.

    Eager and ``torch.export`` go through the ``modconv_export::depthwise_conv2d`` custom op (lowered
    to one ONNX ``Conv``). Under TorchScript tracing -- ``torch.jit.trace`` and the legacy ONNX
    exporter -- it records a plain ``aten::conv2d`` instead, so a saved TorchScript file needs nothing
    from this package to load.
    """

    def __init__(self, kernel: torch.Tensor, padding: int | None = None) -> None:
        super().__init__()
        if kernel.dim() != 4 or kernel.shape[1] != 1:
            raise ValueError(f"depthwise kernel must be [C, 1, k, k], got {tuple(kernel.shape)}")
        self.register_buffer("weight", kernel.detach().clone())
        self.padding = int(kernel.shape[-1] // 2 if padding is None else padding)

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return F.conv2d(input, self.weight, padding=self.padding, groups=self.channels)
        return torch.ops.modconv_export.depthwise_conv2d(input, self.weight, self.padding)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel={self.weight.shape[-1]}, padding={self.padding}"


class InputModulatedConv2d(nn.Module):
    """Modulated convolution with constant weights: the input is scaled per channel, not the weight.

    ``style`` maps the latent to ``s - 1`` per input channel (the seed's ``mlp_class_std``). ``pad``,
    ``upsampler``, ``blur`` and ``downsampler`` are the seed layer's own modules (already rewritten), kept
    in the seed's order: upsample -> [blur if downsampling] -> pad -> conv -> demodulate -> + bias ->
    [avg-pool if downsampling] -> [blur if upsampling].

    Half precision (:mod:`modconv_export.precision`) keeps ``float32_modules`` and ``float32_buffers``
    in float32, and the demodulation is always computed in float32 (:func:`demodulation`).
    """

    float32_modules = ("style",)
    float32_buffers = ("weight_sq_sum_t",)

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        style: nn.Module,
        pad: nn.Module,
        *,
        demodulate: bool,
        eps: float = 1e-5,
        upsampler: nn.Module | None = None,
        downsampler: nn.Module | None = None,
        blur: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out_channels, in_channels = weight.shape[:2]
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.demodulate = bool(demodulate)
        self.eps = float(eps)
        # Already scaled (equalized learning rate folded in): a constant initializer in the graph.
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().reshape(1, out_channels, 1, 1).clone(), requires_grad=False)
        # sum over the kernel window of W^2, transposed to [Cin, Cout]: demodulation is one MatMul.
        self.register_buffer("weight_sq_sum_t", (weight.detach() ** 2).sum(dim=(2, 3)).t().contiguous())
        self.style = style
        self.pad = pad
        self.upsampler = upsampler
        self.downsampler = downsampler
        self.blur = blur

    def forward(self, input: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        s = 1 + self.style(latent).reshape(-1, self.in_channels)
        # In a half-precision export the style MLP runs in float32 (float32_modules): only the per-channel
        # factors are cast to the feature maps' dtype, the demodulation stays in float32.
        s_x = s if s.dtype == input.dtype else s.to(input.dtype)
        x = input * s_x.reshape(-1, self.in_channels, 1, 1)
        if self.upsampler is not None:
            x = self.upsampler(x)
        if self.downsampler is not None and self.blur is not None:
            x = self.blur(x)
        out = F.conv2d(self.pad(x), self.weight)
        if self.demodulate:
            d = demodulation(s, self.weight_sq_sum_t, self.eps)
            out = out * (d if d.dtype == out.dtype else d.to(out.dtype)).reshape(-1, self.out_channels, 1, 1)
        out = out + self.bias
        if self.downsampler is not None:
            out = self.downsampler(out)
        if self.upsampler is not None and self.blur is not None:
            out = self.blur(out)
        return out

    def extra_repr(self) -> str:
        k = self.weight.shape[-1]
        return f"{self.in_channels}, {self.out_channels}, kernel_size={k}, demodulate={self.demodulate}"
