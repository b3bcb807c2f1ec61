"""A user's own copy of the seed layers under other class names and another module path.

The toolkit has never seen this module; its rules must still match these classes by structure.
The code is deliberately written differently from modconv_export.layers.seed (other names, a
new-style autograd Function with setup_context, functional helpers) while computing the same thing.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ScaledLR:
    def __init__(self, name):
        self.name = name

    def __call__(self, module, inputs):
        w = getattr(module, self.name + "_orig")
        setattr(module, self.name, w * math.sqrt(2 / (w.size(1) * w[0][0].numel())))


def scaled(module, name="weight"):
    w = getattr(module, name)
    del module._parameters[name]
    module.register_parameter(name + "_orig", nn.Parameter(w.data))
    module.register_forward_pre_hook(ScaledLR(name))
    return module


class StyleLinear(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.linear = scaled(nn.Linear(i, o))

    def forward(self, x):
        return self.linear(x)


class SmoothFn(torch.autograd.Function):
    @staticmethod
    def forward(x, k, k_flip):
        return F.conv2d(x, k, padding=1, groups=x.shape[1])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, g):
        k, k_flip = ctx.saved_tensors
        return F.conv2d(g, k_flip, padding=1, groups=g.shape[1]), None, None


class Smooth(nn.Module):
    def __init__(self, ch):
        super().__init__()
        k = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0]))
        k = (k / k.sum())[None, None]
        self.register_buffer("weight", k.repeat(ch, 1, 1, 1))
        self.register_buffer("weight_flip", k.flip(2, 3).repeat(ch, 1, 1, 1))

    def forward(self, x):
        return SmoothFn.apply(x, self.weight, self.weight_flip)


class StyleConv(nn.Module):
    def __init__(self, cin, cout, k, up=False, down=False, zdim=8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = cin, cout, k
        self.upsample, self.downsample, self.demudulate = up, down, k > 1
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.randn(1, cout, 1, 1) * 0.1)
        self.mlp_class_std = StyleLinear(zdim, cin)
        self.blur = Smooth(cout)
        self.padding = nn.ReflectionPad2d(k // 2)
        if up:
            self.upsampler = nn.Upsample(scale_factor=2, mode="nearest")
        if down:
            self.downsampler = nn.AvgPool2d(2)

    def forward(self, x, z):
        n = x.shape[0]
        w = self.weight * math.sqrt(2 / (self.in_channels * self.kernel_size**2))
        s = 1 + self.mlp_class_std(z)
        w = w[None] * s[:, None, :, None, None]
        if self.demudulate:
            w = w * torch.rsqrt(w.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-5)
        if self.upsample:
            x = self.upsampler(x)
        if self.downsample:
            x = self.blur(x)
        h, wd = x.shape[-2:]
        y = F.conv2d(self.padding(x.reshape(1, -1, h, wd)), w.reshape(-1, self.in_channels, self.kernel_size, self.kernel_size), groups=n)
        y = y.reshape(n, self.out_channels, h, wd) + self.bias
        if self.downsample:
            y = self.downsampler(y)
        if self.upsample:
            y = self.blur(y)
        return y


class UserGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.ModuleList([StyleConv(4, 6, 3, up=True), StyleConv(6, 6, 3, down=True), StyleConv(6, 3, 1)])

    def forward(self, x, z):
        for layer in self.body:
            x = F.leaky_relu(layer(x, z), 0.2)
        return x
