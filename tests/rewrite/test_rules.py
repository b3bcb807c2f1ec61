"""Rules match by structure: users' own copies are rewritten, near misses are reported with reasons.

Table-driven: every registered rule must appear in RULE_CASES (a new rule without a test fails here). Each
case is a model using the layer, rewritten on example inputs: the rule's replacement must be proven on the
inputs recorded from that model's forward pass. The sliced-input cases feed a layer fewer channels than its
parameters hold (as slimmable generators do, slicing a bias or weight to ``x.shape[1]``): a replacement
that is only right at full width must be rejected there, and a layer that is plain torch already is left
to the graph stage by a rule that exists for CUDA-only code.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from modconv_export import ExportError, RewriteError, export_onnx, rewrite_model
from modconv_export.layers.seed import Blur, EqualConv2d, EqualLinear, ModulatedConv2d
from modconv_export.layers.seed_forms import DepthwiseBlur, SeedModulatedConvForm
from modconv_export.rewrite import Proof, Rewritten, registered_rules

from fixtures.foreign_layers.width_dial import Clasp
from fixtures.user_layers.my_stylegan import Smooth, SmoothFn, StyleConv, StyleLinear, UserGenerator
from helpers import randomize, relative_l2

#: Expected outcomes besides an export-form type (checked) or ``None`` (rewritten, type not checked):
LEFT = "left to the graph stage"  # the rule does not replace it, and that is no near miss
REJECTED = "rejected on the model's inputs"  # a near miss: the replacement is wrong where the model runs it


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


class WidthBlur(RenamedBlur):
    """A slimmable blur: it keeps one kernel per channel of the widest setting and uses those it is fed."""

    def forward(self, x):
        c = x.shape[1]
        return SmoothFn.apply(x, self.k_fwd[:c], self.k_back[:c])


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
        ("sliced-input", lambda: WidthBlur(6), lambda: (torch.randn(2, 4, 6, 5),), REJECTED),
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


class WidthLinear(sg2.EqualLinear):
    """A slimmable copy of basicsr's ``EqualLinear``: its weight sliced to the features it is fed."""

    def forward(self, x):
        return nn.functional.linear(x, self.weight[:, : x.shape[1]] * self.scale, self.bias * self.lr_mul)


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
            ("sliced-bias", lambda: Clasp(8), lambda: (torch.randn(2, 5, 4, 3),), LEFT),  # plain torch: bias[:x.shape[1]]
            ("plain-torch", lambda: Clasp(5), lambda: (torch.randn(2, 5, 4, 3),), LEFT),
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
            ("sliced-input", lambda: WidthLinear(6, 4), lambda: (torch.randn(2, 4),), REJECTED),
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
    "rule,case,factory,inputs,expected",
    [(rule, *case) for rule, cases in RULE_CASES.items() for case in cases],
    ids=[f"{rule}-{case[0]}" for rule, cases in RULE_CASES.items() for case in cases],
)
def test_rule_case(rule, case, factory, inputs, expected):
    torch.manual_seed(0)
    model = randomize(OneLayer(factory(), 0), seed=1)
    args = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if expected == REJECTED else "error")
        exportable, report = rewrite_model(model, example_inputs=args, graph=False)
    with torch.no_grad():
        assert relative_l2(exportable(*args), model(*args)) <= 1e-5
    misses = [miss.reason for miss in report.near_misses if miss.rule == rule]
    if expected in (LEFT, REJECTED):
        assert rule not in {done.rule for done in report.rewritten} and type(exportable.layer) is type(model.layer)
        assert len(misses) == (expected == REJECTED) and all("on an input of the shape the model gives it" in why for why in misses), misses
        return
    assert misses == [] and report.near_misses == []
    # proven on what the model gives the layer (recorded from its forward), unless the rule has no probe
    has_probe = next(r for r in registered_rules() if r.name == rule).probe_inputs is not None
    assert {proof.inputs for proof in report.proofs if proof.rule == rule} == {"recorded" if has_probe else "none"}
    if expected is not None:
        assert isinstance(exportable.layer, expected)


def test_user_generator_in_unknown_module_is_rewritten():
    torch.manual_seed(0)
    model = UserGenerator().eval()
    x, z = torch.randn(3, 4, 8, 8), torch.randn(3, 8)
    exportable, report = rewrite_model(model)
    assert sorted(done.path for done in report.rewritten if done.rule == "modulated_conv") == ["body.0", "body.1", "body.2"]
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
    misses = {miss.path: miss.reason for miss in report.near_misses if miss.rule == "modulated_conv"}
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


def test_a_synthetic_probe_cannot_see_a_sliced_input_but_the_recorded_one_does():
    """The failure the recorded inputs exist for: a probe built from the parameters feeds the full width,
    so the full-width replacement passes it -- and the rewritten model then rejects its own inputs."""
    model = randomize(OneLayer(WidthLinear(6, 4), 1), seed=3)
    args = (torch.randn(2, 4),)
    blind, report = rewrite_model(model)
    assert report.proofs == [Proof("layer", "scaled_equal_linear", "synthetic")]
    with pytest.raises(RuntimeError), torch.no_grad():
        blind(*args)
    with pytest.warns(
        UserWarning, match="layer: looks like scaled_equal_linear but its export form fails on an input of the shape the model gives it"
    ):
        exportable, report = rewrite_model(model, example_inputs=args, graph=False)
    assert report.rewritten == [] and type(exportable.layer) is WidthLinear


class KernelOnlyAct(nn.Module):
    """A fused bias + leaky ReLU whose only code is a CUDA kernel that is not built here (as basicsr 1.4.2's on CPU)."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(channels))
        self.negative_slope, self.scale = 0.2, 2**0.5

    def forward(self, x):
        raise NameError("name 'fused_act_ext' is not defined")


class ActThenConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = KernelOnlyAct(3)
        self.conv = ModulatedConv2d(3, 4, 3, latent_dim=4)

    def forward(self, x, latent):
        return self.conv(self.act(x), latent)


def test_a_module_that_cannot_run_here_stands_in_by_its_replacement_while_recording():
    """The model cannot run on the CPU at all; the forward pass that records the rules' inputs goes on with
    the replacement of the CUDA-only module, so the layers after it are still proven on the model's inputs."""
    model = randomize(ActThenConv(), seed=4)
    x, latent = torch.randn(2, 3, 6, 6), torch.randn(2, 4)
    with pytest.raises(NameError):
        model(x, latent)
    exportable, report = rewrite_model(model, example_inputs=(x, latent), graph=False)
    assert {proof.path: proof.inputs for proof in report.proofs if proof.path in ("act", "conv")} == {"act": "recorded", "conv": "recorded"}
    [(path, rule, note)] = [(n.path, n.rule, n.note) for n in report.notes]
    assert (path, rule) == ("act", "fused_leaky_relu") and "not compared numerically" in note and "fused_act_ext" in note
    expected = model.conv(nn.functional.leaky_relu(x + model.act.bias.view(1, -1, 1, 1), 0.2) * 2**0.5, latent)
    with torch.no_grad():
        assert relative_l2(exportable(x, latent), expected) <= 1e-5
    assert "forward" not in vars(model.act)  # the stand-in lived on the rewrite's copy only


class Doubler(nn.Module):
    def forward(self, x):
        return x * 2


class BatchOfTwoDoubler(nn.Module):
    """Right at batch 2 only: a replacement the recorded forward (batch 2) cannot catch."""

    def forward(self, x):
        return (x * 2).reshape(2, *x.shape[1:])


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Identity(), Doubler())

    def forward(self, x):
        return self.inner(x)


def test_a_rewritten_model_that_rejects_the_inputs_names_the_rule(tmp_path):
    from modconv_export.rewrite import RuleRegistry, use_rules

    rules = RuleRegistry()
    rules.rule("batch_of_two_doubler", looks_like=lambda m: type(m) is Doubler, check=lambda m: None, probe_inputs=lambda m: None)(
        lambda m: BatchOfTwoDoubler()
    )
    with pytest.raises(ExportError) as caught, use_rules(rules):
        export_onnx(Wrapped(), (torch.randn(1, 4),), tmp_path / "m.onnx")
    message = str(caught.value)
    assert message.startswith(
        "the rewritten model (not the model itself, which accepts them) rejects the example inputs [(1, 4)] in inner.1: "
    )
    assert message.endswith("; the module rule batch_of_two_doubler rewrote inner.1 first there")
    assert not (tmp_path / "m.onnx").exists()


def test_the_recording_pass_runs_on_fake_tensors_and_on_real_ones_only_where_it_must():
    """The module rules' forward pass costs no feature maps: it runs on fake tensors and each module is
    proven on random inputs of the shapes it received; an integer argument (whose values a proof may
    need) makes it run on the real inputs and keep them."""
    from modconv_export.rewrite.recorded import TensorShape, record_calls

    class Indexed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return self.layer(x[:, :4]).index_select(1, index)

    model = Indexed()
    args = (torch.randn(2, 6), torch.tensor([2, 0]))
    fake = record_calls(model, args, [model.layer], shapes_only=True)
    (call,) = fake.calls[model.layer]
    assert fake.error is None and call.args == (TensorShape((2, 4), torch.float32),)
    drawn = call.materialized(seed=1)
    assert not drawn.values and drawn.args[0].shape == (2, 4) and torch.equal(drawn.args[0], call.materialized(seed=1).args[0])
    needs_values = record_calls(model, args, [model], shapes_only=True)
    assert needs_values.error is not None and "int64" in needs_values.error
    (real,) = record_calls(model, args, [model]).calls[model]
    assert real.values and torch.equal(real.args[1], args[1]) and torch.equal(real.args[0], args[0])


def test_a_rule_registry_is_an_object_a_call_is_given():
    """``rules=`` chooses the module rules of one call; ``use_rules`` those of a block, restored after it."""
    from modconv_export.rewrite import RuleRegistry, registered_rules, use_rules

    only_blur = RuleRegistry([next(r for r in registered_rules() if r.name == "blur")])
    with pytest.raises(ValueError, match=r"rewrite rule 'blur' is registered twice"):
        only_blur.add(only_blur.get("blur"))
    model = ActThenConv()
    assert [done.rule for done in rewrite_model(model)[1].rewritten] == ["fused_leaky_relu", "equal_lr", "blur", "modulated_conv"]
    assert rewrite_model(model, rules=only_blur)[1].rewritten == [Rewritten("conv.blur", "blur")]
    builtin = [r.name for r in registered_rules()]
    with use_rules(only_blur):
        assert [r.name for r in registered_rules()] == ["blur"]
    assert [r.name for r in registered_rules()] == builtin and len(builtin) == len(RULE_CASES)
    with use_rules(RuleRegistry()):  # an empty registry is a registry: the graph rewrite alone
        assert registered_rules() == [] and rewrite_model(model)[1].rewritten == []
