"""The export form equals the seed layer: every variant, several batch sizes, odd and even sizes."""

from __future__ import annotations

import itertools

import pytest
import torch

from modconv_export import make_exportable, rewrite_report
from modconv_export.layers.seed import Blur, ModulatedConv2d
from modconv_export.layers.seed_forms import DepthwiseBlur, SeedModulatedConvForm

from helpers import randomize, relative_l2


class Wrap(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, latent):
        return self.layer(x, latent)


# kernel, padding, upsample, downsample, normalize_mlp
VARIANTS = [
    (k, pad, up, down, norm)
    for k, pad, (up, down), norm in itertools.product(
        (1, 3), ("reflect", "zero"), ((False, False), (True, False), (False, True)), (False, True)
    )
]


@pytest.mark.parametrize("kernel,padding,upsample,downsample,normalize_mlp", VARIANTS)
def test_modulated_conv_variants_equal_seed(kernel, padding, upsample, downsample, normalize_mlp):
    torch.manual_seed(kernel * 7 + upsample * 3 + downsample)
    c_in = 5
    c_out = c_in if downsample else 7  # the seed's downsample blur has c_out channels and runs on the input
    layer = ModulatedConv2d(
        c_in, c_out, kernel, padding_type=padding, upsample=upsample, downsample=downsample, latent_dim=12, normalize_mlp=normalize_mlp
    )
    seed_model = randomize(Wrap(layer), seed=kernel + 10 * upsample + 20 * downsample)
    exportable = make_exportable(seed_model)
    assert isinstance(exportable.layer, SeedModulatedConvForm)
    for batch, (h, w) in zip((1, 2, 5), ((9, 9), (8, 8), (7, 10))):
        x, latent = torch.randn(batch, c_in, h, w), torch.randn(batch, 12)
        with torch.no_grad():
            expected = seed_model(x, latent)
            actual = exportable(x, latent)
        assert actual.shape == expected.shape
        assert relative_l2(actual, expected) <= 1e-5, (batch, h, w)


def test_nonzero_bias_matters():
    """Guard against a vacuous comparison: the randomised bias changes the output."""
    layer = randomize(Wrap(ModulatedConv2d(3, 4, 3, latent_dim=6)), seed=3)
    x, latent = torch.randn(2, 3, 6, 6), torch.randn(2, 6)
    with torch.no_grad():
        with_bias = layer(x, latent)
        layer.layer.bias.zero_()
        without = layer(x, latent)
    assert relative_l2(without, with_bias) > 1e-2


def test_original_model_untouched(tiny_decoder, tiny_args):
    before = {k: v.clone() for k, v in tiny_decoder.state_dict().items()}
    with torch.no_grad():
        reference = tiny_decoder(*tiny_args)
    exportable = make_exportable(tiny_decoder)
    assert exportable is not tiny_decoder
    after = tiny_decoder.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "conv_in.mlp_class_std.0.linear.weight_orig" in after
    assert isinstance(tiny_decoder.conv_in, ModulatedConv2d) and isinstance(tiny_decoder.blur, Blur)
    with torch.no_grad():
        assert torch.equal(tiny_decoder(*tiny_args), reference)
        assert relative_l2(exportable(*tiny_args), reference) <= 1e-5


def test_report_lists_rewritten_paths(tiny_decoder):
    report = rewrite_report(make_exportable(tiny_decoder))
    modconvs = {done.path for done in report.rewritten if done.rule == "modulated_conv"}
    assert modconvs == {"conv_in", "conv_up", "conv_down", "to_rgb"}
    blurs = {done.path for done in report.rewritten if done.rule == "blur"}
    assert blurs == {"blur", "conv_in.blur", "conv_up.blur", "conv_down.blur", "to_rgb.blur"}
    folds = {done.path for done in report.rewritten if done.rule == "equal_lr"}
    assert "mapping.1.linear" in folds and "to_rgb.mlp_class_std.linear" in folds
    assert report.near_misses == []


def test_exportable_has_no_hooks_or_seed_layers(tiny_decoder):
    exportable = make_exportable(tiny_decoder)
    for name, module in exportable.named_modules():
        assert not module._forward_pre_hooks, name
        assert not isinstance(module, (ModulatedConv2d, Blur)), name
    assert not any(k.endswith("_orig") for k in exportable.state_dict())
    assert isinstance(exportable.blur, DepthwiseBlur)


def test_deepcopy_after_forward(tiny_decoder, tiny_args):
    """An EqualLR hook leaves a non-leaf weight attribute after a forward with grad; rewriting still works."""
    model = randomize(type(tiny_decoder)(), seed=5)
    model(*tiny_args).sum()  # grad-enabled forward: hooks store graph-attached weights
    exportable = make_exportable(model)
    with torch.no_grad():
        assert relative_l2(exportable(*tiny_args), model(*tiny_args)) <= 1e-5
