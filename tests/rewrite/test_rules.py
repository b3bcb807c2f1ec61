"""Rules match by structure: users' own copies are rewritten, near misses are reported with reasons.

Table-driven: every registered rule must appear in RULE_CASES (a new rule without a test fails here).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from modconv_export import RewriteError, rewrite_model
from modconv_export.layers.seed import Blur, EqualConv2d, EqualLinear, ModulatedConv2d
from modconv_export.layers.seed_forms import DepthwiseBlur, SeedModulatedConvForm
from modconv_export.rewrite import registered_rules

from fixtures.user_layers.my_stylegan import Smooth, SmoothFn, StyleConv, StyleLinear, UserGenerator
from helpers import randomize, relative_l2


class OneLayer(nn.Module):
    def __init__(self, layer, n_inputs):
        super().__init__()
        self.layer, self.n_inputs = layer, n_inputs

    def forward(self, *args):
        return self.layer(*args)


class RenamedBlur(nn.Module):
    """A user's blur keeping its kernels as ``k_back``/``k_fwd`` (backward one first) and an asymmetric kernel."""

    def __init__(self, ch):
        super().__init__()
        k = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) / 36.0
        self.register_buffer("k_back", k.flip(2, 3).repeat(ch, 1, 1, 1))
        self.register_buffer("k_fwd", k.repeat(ch, 1, 1, 1))

    def forward(self, x):
        return SmoothFn.apply(x, self.k_fwd, self.k_back)


# rule name -> list of (case id, module factory, inputs factory, expected export-form type or None)
RULE_CASES = {
    "modulated_conv": [
        (
            "seed",
            lambda: ModulatedConv2d(3, 5, 3, latent_dim=4),
            lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 4)),
            SeedModulatedConvForm,
        ),
        ("user-copy", lambda: StyleConv(3, 3, 3, down=True), lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 8)), SeedModulatedConvForm),
    ],
    "blur": [
        ("seed", lambda: Blur(4), lambda: (torch.randn(2, 4, 5, 5),), DepthwiseBlur),
        ("user-copy", lambda: Smooth(4), lambda: (torch.randn(2, 4, 5, 5),), DepthwiseBlur),
        ("other-buffer-names", lambda: RenamedBlur(3), lambda: (torch.randn(2, 3, 6, 5),), DepthwiseBlur),
    ],
    "equal_lr": [
        ("linear", lambda: EqualLinear(6, 3), lambda: (torch.randn(2, 6),), None),
        ("conv", lambda: EqualConv2d(2, 3, 3, padding=1), lambda: (torch.randn(2, 2, 5, 5),), None),
        ("user-copy", lambda: StyleLinear(6, 3), lambda: (torch.randn(2, 6),), None),
    ],
}

# StyleGAN2 layers of GFPGAN (stylegan2_clean_arch) and basicsr (stylegan2_arch): our faithful copies
# (tests/fixtures/stylegan2/layers.py); tests/rewrite/test_stylegan2_rules.py runs the upstream files too.
from modconv_export.layers.stylegan2_forms import BiasLeakyReLU, NoisyStyleConv, ScaledLinear, StyleGAN2ModulatedConvForm, UpFirDn2d  # noqa: E402

from fixtures.stylegan2 import layers as sg2  # noqa: E402

RULE_CASES.update(
    {
        "stylegan2_clean_modulated_conv": [
            (
                mode or "same",
                lambda mode=mode: sg2.CleanModulatedConv2d(3, 5, 3, 4, sample_mode=mode),
                lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 4)),
                StyleGAN2ModulatedConvForm,
            )
            for mode in (None, "upsample", "downsample")
        ]
        + [
            (
                "no-demod-1x1",
                lambda: sg2.CleanModulatedConv2d(4, 3, 1, 4, demodulate=False),
                lambda: (torch.randn(2, 4, 5, 5), torch.randn(2, 4)),
                StyleGAN2ModulatedConvForm,
            )
        ],
        "stylegan2_modulated_conv": [
            (
                mode or "same",
                lambda mode=mode: sg2.ModulatedConv2d(3, 5, 3, 4, sample_mode=mode),
                lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 4)),
                StyleGAN2ModulatedConvForm,
            )
            for mode in (None, "upsample", "downsample")
        ]
        + [
            (
                "no-demod-1x1",
                lambda: sg2.ModulatedConv2d(4, 3, 1, 4, demodulate=False),
                lambda: (torch.randn(2, 4, 5, 5), torch.randn(2, 4)),
                StyleGAN2ModulatedConvForm,
            )
        ],
        "upfirdn2d": [
            ("upsample", lambda: sg2.UpFirDnUpsample(), lambda: (torch.randn(2, 3, 5, 6),), UpFirDn2d),
            ("downsample", lambda: sg2.UpFirDnDownsample(), lambda: (torch.randn(2, 3, 8, 7),), UpFirDn2d),
            ("smooth-up", lambda: sg2.UpFirDnSmooth(upsample_factor=2, kernel_size=3), lambda: (torch.randn(2, 3, 9, 9),), UpFirDn2d),
            (
                "smooth-down-k5",
                lambda: sg2.UpFirDnSmooth((1, 2, 3, 2, 1), downsample_factor=2, kernel_size=3),
                lambda: (torch.randn(2, 3, 8, 8),),
                UpFirDn2d,
            ),
        ],
        "fused_leaky_relu": [
            ("4d", lambda: sg2.FusedLeakyReLU(5), lambda: (torch.randn(2, 5, 4, 3),), BiasLeakyReLU),
            ("2d", lambda: sg2.FusedLeakyReLU(5, negative_slope=0.1, scale=1.5), lambda: (torch.randn(3, 5),), BiasLeakyReLU),
        ],
        "scaled_equal_linear": [
            ("plain", lambda: sg2.EqualLinear(6, 4, bias_init_val=1), lambda: (torch.randn(2, 6),), ScaledLinear),
            (
                "fused-lrelu",
                lambda: sg2.EqualLinear(6, 4, lr_mul=0.01, activation="fused_lrelu"),
                lambda: (torch.randn(2, 6),),
                ScaledLinear,
            ),
            ("no-bias", lambda: sg2.EqualLinear(6, 4, bias=False), lambda: (torch.randn(2, 6),), ScaledLinear),
        ],
        "style_conv_noise": [
            (
                "clean-up",
                lambda: sg2.CleanStyleConv(3, 4, 3, 5, sample_mode="upsample"),
                lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 5), torch.randn(2, 1, 12, 12)),
                NoisyStyleConv,
            ),
            (
                "basicsr-up",
                lambda: sg2.StyleConv(3, 4, 3, 5, sample_mode="upsample"),
                lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 5), torch.randn(1, 1, 12, 12)),
                NoisyStyleConv,
            ),
            (
                "basicsr-same",
                lambda: sg2.StyleConv(4, 4, 3, 5),
                lambda: (torch.randn(2, 4, 6, 6), torch.randn(2, 5), torch.randn(2, 1, 6, 6)),
                NoisyStyleConv,
            ),
        ],
    }
)


def test_every_registered_rule_has_cases():
    assert {rule.name for rule in registered_rules()} == set(RULE_CASES)


@pytest.mark.parametrize(
    "rule,case,factory,inputs,expected_type",
    [(rule, *case) for rule, cases in RULE_CASES.items() for case in cases],
    ids=[f"{rule}-{case[0]}" for rule, cases in RULE_CASES.items() for case in cases],
)
def test_rule_case(rule, case, factory, inputs, expected_type):
    torch.manual_seed(0)
    model = randomize(OneLayer(factory(), 0), seed=1)
    args = inputs()
    exportable, report = rewrite_model(model)
    assert rule in {r for _, r in report.rewritten}
    if expected_type is not None:
        assert isinstance(exportable.layer, expected_type)
    with torch.no_grad():
        assert relative_l2(exportable(*args), model(*args)) <= 1e-5
    assert report.near_misses == []


def test_user_generator_in_unknown_module_is_rewritten():
    torch.manual_seed(0)
    model = UserGenerator().eval()
    x, z = torch.randn(3, 4, 8, 8), torch.randn(3, 8)
    exportable, report = rewrite_model(model)
    assert sorted(p for p, r in report.rewritten if r == "modulated_conv") == ["body.0", "body.1", "body.2"]
    assert all(isinstance(layer, SeedModulatedConvForm) for layer in exportable.body)
    with torch.no_grad():
        assert relative_l2(exportable(x, z), model(x, z)) <= 1e-5


class ConstantPadded(ModulatedConv2d):
    """Looks like the seed layer, but pads with a non-zero constant (does not commute with scaling)."""

    def __init__(self):
        super().__init__(3, 3, 3, latent_dim=4)
        self.padding = nn.ConstantPad2d(1, 0.5)


class WrongScale(ModulatedConv2d):
    """Looks like the seed layer but demodulates differently: only the probe can tell."""

    def forward(self, input, latent):
        return super().forward(input, latent) * 1.5


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.good = ModulatedConv2d(3, 3, 3, latent_dim=4)
        self.stages = nn.ModuleList([ConstantPadded(), WrongScale(3, 3, 3, latent_dim=4)])

    def forward(self, x, latent):
        return self.stages[1](self.stages[0](self.good(x, latent), latent), latent)


def test_near_misses_are_reported_with_path_and_reason():
    model = randomize(Holder(), seed=2)
    with pytest.warns(UserWarning, match="stages.0"):
        exportable, report = rewrite_model(model)
    misses = {path: reason for path, rule, reason in report.near_misses if rule == "modulated_conv"}
    assert set(misses) == {"stages.0", "stages.1"}
    assert "padding" in misses["stages.0"] and "ConstantPad2d" in misses["stages.0"]
    assert "differs" in misses["stages.1"]
    assert isinstance(exportable.good, SeedModulatedConvForm)
    assert isinstance(exportable.stages[0], ConstantPadded) and isinstance(exportable.stages[1], WrongScale)
    x, latent = torch.randn(2, 3, 6, 6), torch.randn(2, 4)
    with torch.no_grad():
        assert relative_l2(exportable(x, latent), model(x, latent)) <= 1e-5


def test_strict_raises_on_near_miss():
    with pytest.raises(RewriteError, match="stages.0: looks like modulated_conv"):
        rewrite_model(randomize(Holder(), seed=2), strict=True)


def test_no_warning_for_clean_models(tiny_decoder, tiny_args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exportable, report = rewrite_model(tiny_decoder)
    assert report.near_misses == [] and report.counts() == {"equal_lr": 5, "blur": 5, "modulated_conv": 4}
    with torch.no_grad():
        assert relative_l2(exportable(*tiny_args), tiny_decoder(*tiny_args)) <= 1e-5


def test_unrelated_modules_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4))
    exportable, report = rewrite_model(model)
    assert report.rewritten == [] and report.near_misses == []
    assert isinstance(exportable[2], nn.Conv2d)


class NoiseHolder(nn.Module):
    """StyleGAN2's fixed noise buffers: parameter-free, [1, 1, H, W] maps -- not a blur."""

    def __init__(self):
        super().__init__()
        for i, size in enumerate((4, 8, 16)):
            self.register_buffer(f"noise{i}", torch.randn(1, 1, size, size))

    def forward(self, x):
        return x + self.noise0


def test_noise_buffers_are_not_taken_for_a_blur():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exportable, report = rewrite_model(OneLayer(NoiseHolder(), 1))
    assert report.rewritten == [] and report.near_misses == []
    assert isinstance(exportable.layer, NoiseHolder)
