"""The StyleGAN2 rules (GFPGAN clean, basicsr) layer by layer: exact export forms, near misses, noise.

Our own layer copies are in tests/rewrite/test_rules.py's RULE_CASES; here the upstream files themselves are
rewritten too when their archives are available (see tests/fixtures/stylegan2/upstream.py), and the
upfirdn2d export form is checked against two references: ours and basicsr's own CPU code.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from modconv_export import RewriteError, rewrite_model
from modconv_export.layers.stylegan2_forms import ZERO_NOISE_NOTE, BiasLeakyReLU, NoisyStyleConv, StyleGAN2ModulatedConvForm, UpFirDn2d
from modconv_export.rewrite import Note, Proof

from fixtures.stylegan2 import layers as sg2
from fixtures.stylegan2 import reference_ops
from fixtures.stylegan2.models import perturb
from fixtures.stylegan2.upstream import load_upstream, missing_reason
from helpers import relative_l2

UPSTREAM_MISSING = missing_reason()
needs_upstream = pytest.mark.skipif(UPSTREAM_MISSING is not None, reason=f"upstream archives: {UPSTREAM_MISSING}")


@pytest.fixture(scope="module")
def up():
    return load_upstream()


class One(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args):
        return self.layer(*args)


def _rewritten_equal(layer: nn.Module, args: tuple, rule: str, tol: float = 1e-5):
    model = One(layer).eval()
    exportable, report = rewrite_model(model, example_inputs=args, graph=False)
    assert rule in {done.rule for done in report.rewritten}, report.rewritten
    assert report.near_misses == []
    assert {proof.inputs for proof in report.proofs if proof.rule == rule} == {"recorded"}  # on what the model gives the layer
    with torch.no_grad():
        assert relative_l2(exportable(*args), model(*args)) <= tol
    return exportable, report


# ---------------------------------------------------------------- upfirdn2d: (up, down, pad, kernel shape)
UPFIRDN = [
    (2, 1, (2, 1), (4, 4)),  # basicsr UpFirDnUpsample
    (1, 2, (1, 1), (4, 4)),  # UpFirDnDownsample
    (1, 1, (1, 1), (4, 4)),  # UpFirDnSmooth after an upsampling 3x3 conv
    (1, 1, (2, 2), (4, 4)),  # UpFirDnSmooth before a downsampling 3x3 conv
    (2, 1, (0, 0), (4, 4)),  # crops more than the transposed conv pads
    (2, 1, (3, 3), (4, 4)),  # pads beyond the full convolution
    (1, 2, (2, 1), (3, 3)),  # asymmetric pad
    (1, 1, (-1, 2), (4, 4)),  # negative pad crops the input
    (3, 1, (2, 2), (5, 5)),
    (2, 1, (1, 2), (3, 5)),  # non-square kernel
]


@pytest.mark.parametrize("channels", [None, 3], ids=["3d", "depthwise"])
@pytest.mark.parametrize("up_,down,pad,kshape", UPFIRDN)
def test_upfirdn2d_form_matches_reference(up_, down, pad, kshape, channels):
    gen = torch.Generator().manual_seed(sum(kshape) + up_)
    x, kernel = torch.randn(2, 3, 7, 9, generator=gen), torch.randn(*kshape, generator=gen)
    form = UpFirDn2d(kernel, up_, down, pad, channels=channels)
    expected = reference_ops.upfirdn2d(x, kernel, up_, down, pad)
    assert form(x).shape == expected.shape
    assert relative_l2(form(x), expected) <= 1e-6


@needs_upstream
@pytest.mark.parametrize("up_,down,pad,kshape", UPFIRDN)
def test_upfirdn2d_reference_is_basicsrs(up, up_, down, pad, kshape):
    """Our reference is faithful: it equals basicsr's own CPU implementation."""
    gen = torch.Generator().manual_seed(7)
    x, kernel = torch.randn(2, 3, 7, 9, generator=gen), torch.randn(*kshape, generator=gen)
    native = up["upfirdn2d"].upfirdn2d(x, kernel, up=up_, down=down, pad=pad)
    assert relative_l2(reference_ops.upfirdn2d(x, kernel, up_, down, pad), native) <= 1e-6


# ---------------------------------------------------------------- the upstream layers themselves
def _upstream_cases():
    x8, s16 = (lambda: torch.randn(2, 6, 8, 8)), (lambda: torch.randn(2, 16))
    clean, bsr = "stylegan2_clean_arch", "stylegan2_arch"
    cases = []
    for mode, _out in ((None, 8), ("upsample", 16), ("downsample", 4)):
        name = mode or "same"
        cases += [
            (
                f"clean-modconv-{name}",
                clean,
                lambda a, m=mode: a.ModulatedConv2d(6, 5, 3, 16, sample_mode=m),
                lambda: (x8(), s16()),
                "stylegan2_clean_modulated_conv",
            ),
            (
                f"basicsr-modconv-{name}",
                bsr,
                lambda a, m=mode: a.ModulatedConv2d(6, 5, 3, 16, sample_mode=m),
                lambda: (x8(), s16()),
                "stylegan2_modulated_conv",
            ),
        ]
    for mode, out in ((None, 8), ("upsample", 16)):
        noise = lambda o=out: torch.randn(2, 1, o, o)  # noqa: E731
        cases += [
            (
                f"clean-styleconv-{mode}",
                clean,
                lambda a, m=mode: a.StyleConv(6, 5, 3, 16, sample_mode=m),
                lambda n=noise: (x8(), s16(), n()),
                "style_conv_noise",
            ),
            (
                f"basicsr-styleconv-{mode}",
                bsr,
                lambda a, m=mode: a.StyleConv(6, 5, 3, 16, sample_mode=m),
                lambda n=noise: (x8(), s16(), n()),
                "style_conv_noise",
            ),
        ]
    cases += [
        ("basicsr-torgb-skip", bsr, lambda a: a.ToRGB(6, 16), lambda: (x8(), s16(), torch.randn(2, 3, 4, 4)), "upfirdn2d"),
        ("basicsr-upsample", bsr, lambda a: a.UpFirDnUpsample((1, 3, 3, 1)), lambda: (x8(),), "upfirdn2d"),
        ("basicsr-downsample", bsr, lambda a: a.UpFirDnDownsample((1, 3, 3, 1)), lambda: (x8(),), "upfirdn2d"),
        (
            "basicsr-smooth-down-1x1",
            bsr,
            lambda a: a.UpFirDnSmooth((1, 3, 3, 1), downsample_factor=2, kernel_size=1),
            lambda: (x8(),),
            "upfirdn2d",
        ),
        ("basicsr-equal-linear", bsr, lambda a: a.EqualLinear(16, 6, bias_init_val=1), lambda: (s16(),), "scaled_equal_linear"),
        (
            "basicsr-equal-linear-fused",
            bsr,
            lambda a: a.EqualLinear(16, 6, lr_mul=0.01, activation="fused_lrelu"),
            lambda: (s16(),),
            "scaled_equal_linear",
        ),
    ]
    return cases


@needs_upstream
@pytest.mark.parametrize("case,arch,factory,inputs,rule", _upstream_cases(), ids=[c[0] for c in _upstream_cases()])
def test_upstream_layer_is_rewritten_exactly(up, case, arch, factory, inputs, rule):
    torch.manual_seed(0)
    layer = perturb(factory(up[arch]), seed=1)
    exportable, _ = _rewritten_equal(layer, inputs(), rule)
    if "modconv" in case:
        assert isinstance(exportable.layer, StyleGAN2ModulatedConvForm)
    if "styleconv" in case:
        assert isinstance(exportable.layer, NoisyStyleConv)


@needs_upstream
def test_basicsr_fused_activation_without_cpu_code_is_replaced_and_says_so(up):
    """basicsr 1.4.2's FusedLeakyReLU cannot run on CPU at all; the rewrite still replaces it with the
    CUDA kernel's arithmetic and the report says it was not compared numerically."""
    real = up["fused_act"].FusedLeakyReLU(5)
    with torch.no_grad():
        real.bias.normal_()
    x = torch.randn(2, 5, 3, 4)
    with pytest.raises(Exception, match="fused_act_ext"):
        real(x)
    exportable, report = rewrite_model(One(real))
    assert isinstance(exportable.layer, BiasLeakyReLU) and report.near_misses == []
    [(path, rule, note)] = [(n.path, n.rule, n.note) for n in report.notes]
    assert (path, rule) == ("layer", "fused_leaky_relu") and "not compared numerically" in note and "fused_act_ext" in note
    with torch.no_grad():
        assert relative_l2(exportable(x), reference_ops.fused_leaky_relu(x, real.bias)) <= 1e-6
    # on example inputs: the model cannot run, so the replacement stands in while the inputs are recorded
    _, report = rewrite_model(One(real), example_inputs=(x,), graph=False)
    assert report.proofs == [Proof("layer", "fused_leaky_relu", "recorded")] and report.notes[0].note == note


# ---------------------------------------------------------------- near misses, with reasons
class BicubicConv(sg2.CleanModulatedConv2d):
    def __init__(self):
        super().__init__(3, 3, 3, 4)
        self.sample_mode = "bicubic"


class UnscaledStyleConv(sg2.CleanStyleConv):
    """Looks like GFPGAN's StyleConv but leaves out the sqrt(2): only the probe can tell."""

    def forward(self, x, style, noise=None):
        return self.activate(self.modulated_conv(x, style) + self.weight * noise + self.bias)


def _no_smooth():
    layer = sg2.ModulatedConv2d(3, 3, 3, 4, sample_mode="upsample")
    del layer.smooth
    return layer


def _odd_kernel_upsampler():
    layer = sg2.UpFirDnUpsample()
    layer.kernel = layer.kernel / 2  # sums to 2: neither an upsampler's 4 nor a downsampler's 1
    return layer


def _style_conv_with_bicubic_conv():
    layer = sg2.CleanStyleConv(3, 3, 3, 4)
    layer.modulated_conv = BicubicConv()
    return layer


NEAR_MISSES = [
    ("bicubic", BicubicConv, "stylegan2_clean_modulated_conv", "sample_mode 'bicubic'"),
    ("no-smooth", _no_smooth, "stylegan2_modulated_conv", "no 'smooth' module"),
    ("kernel-sum", _odd_kernel_upsampler, "upfirdn2d", "kernel sums to 2"),
    ("unscaled", lambda: UnscaledStyleConv(3, 3, 3, 4), "style_conv_noise", "differs on a probe input"),
    ("inner-miss", _style_conv_with_bicubic_conv, "style_conv_noise", "was not rewritten"),
]


@pytest.mark.parametrize("case,factory,rule,reason", NEAR_MISSES, ids=[c[0] for c in NEAR_MISSES])
def test_near_miss_is_reported(case, factory, rule, reason):
    model = One(perturb(factory(), seed=3))
    with pytest.warns(UserWarning, match="looks like"):
        exportable, report = rewrite_model(model)
    misses = {(miss.path, miss.rule): miss.reason for miss in report.near_misses}
    assert reason in misses[("layer", rule)], misses
    assert type(exportable.layer) is type(model.layer)
    with pytest.raises(RewriteError, match=rule):
        rewrite_model(model, strict=True)


# ---------------------------------------------------------------- noise
@pytest.mark.parametrize("flavour", ["clean", "basicsr"])
def test_missing_noise_becomes_zero_noise_and_is_reported(flavour):
    torch.manual_seed(0)
    conv = sg2.CleanStyleConv(3, 4, 3, 5) if flavour == "clean" else sg2.StyleConv(3, 4, 3, 5)
    model = One(perturb(conv, seed=4))
    x, style = torch.randn(2, 3, 6, 6), torch.randn(2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean rewrite: no near-miss warning
        exportable, report = rewrite_model(model)
    assert report.notes == [Note("layer", "style_conv_noise", ZERO_NOISE_NOTE)]
    assert report.describe_notes() == [f"style_conv_noise (1: layer): {ZERO_NOISE_NOTE}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded without noise: compared with explicit noise, no near miss
        _, recorded = rewrite_model(model, example_inputs=(x, style), graph=False)
    assert Proof("layer", "style_conv_noise", "recorded") in recorded.proofs and recorded.notes == report.notes
    with torch.no_grad(), pytest.warns(UserWarning, match="zero noise"):
        out = exportable(x, style)
    with torch.no_grad():
        assert relative_l2(out, model(x, style, torch.zeros(1, 1, 6, 6))) <= 1e-6
        assert relative_l2(out, model(x, style)) > 1e-3  # upstream really draws noise: the note matters
