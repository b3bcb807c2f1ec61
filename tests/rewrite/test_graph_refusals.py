"""What the graph-level rewrite refuses, and how it says so: one line naming the module path and why.

A convolution grouped by the batch that cannot be proven equal to a constant-weight one must stop the
export (never a silently frozen batch); so must a model whose program changes with the batch size, and
an autograd Function torch cannot trace. Gaussian draws become zero noise, with a note.
"""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modconv_export import RewriteError, export_onnx, make_exportable, rewrite_report
from modconv_export.rewrite import Rewritten, RuleRegistry, use_rules

from helpers import relative_l2


@pytest.fixture(autouse=True)
def no_module_rules():
    with use_rules(RuleRegistry()):
        yield


class PerSampleConv(nn.Module):
    """``conv(x, weight(style), groups=batch)`` with the per-sample weight built by ``make_weight``."""

    def __init__(self, make_weight) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.style = nn.Linear(6, 3)
        self.make_weight = make_weight

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        weight = self.make_weight(self.kernel, self.style(z)).reshape(b * 4, 3, 3, 3)
        return F.conv2d(x.reshape(1, b * 3, 8, 8), weight, padding=1, groups=b).reshape(b, 4, 8, 8)


class Outer(nn.Module):
    def __init__(self, make_weight) -> None:
        super().__init__()
        self.block = PerSampleConv(make_weight)

    def forward(self, x, z):
        return self.block(x, z)


ARGS = (torch.randn(1, 3, 8, 8), torch.randn(1, 6))


@pytest.mark.parametrize(
    "make_weight, reason",
    [
        # an additive style is no scale of the kernel: there is no constant kernel to factor out
        (lambda k, s: k[None] + s[:, None, :, None, None], "does not scale input or output channels"),
        # a per-sample factor along the kernel's rows, not a channel axis
        (lambda k, s: k[None] * s[:, None, None, :, None], "does not scale input or output channels"),
        # a factor per (output, input) pair of each sample: not one scale per channel
        (
            lambda k, s: k[None] * (s[:, :, None] * s[:, None, :]).repeat(1, 2, 1)[:, :4, :, None, None],
            "does not scale input or output channels",
        ),
    ],
    ids=["additive", "spatial-factor", "channel-pairs"],
)
def test_unfactorisable_batch_grouped_conv_is_an_error_naming_the_module(make_weight, reason):
    model = Outer(make_weight).eval()
    with pytest.raises(RewriteError, match=rf"^block: a convolution grouped by the batch cannot be made batch-independent: .*{reason}"):
        make_exportable(model, ARGS)


def _square(k, s):
    v = s[:, None, :, None, None]
    return k[None] * v * v / (k[None] * v).pow(2).sum(dim=(2, 3, 4), keepdim=True).sqrt()


@pytest.mark.parametrize(
    "make_weight",
    [lambda k, s: (k[None] * s[:, None, :, None, None]) * 0.5, _square, lambda k, s: k[None] * torch.exp(s)[:, None, :, None, None]],
    ids=["scaled", "style-squared-and-normalised", "exp-style"],
)
def test_factorisable_weight_is_rewritten_and_exact(make_weight):
    model = Outer(make_weight).eval()
    form = make_exportable(model, ARGS)
    assert Rewritten("block", "graph:batch_grouped_conv") in rewrite_report(form).rewritten
    x, z = torch.randn(5, 3, 8, 8), torch.randn(5, 6)
    with torch.no_grad():
        assert relative_l2(form(x, z), model(x, z)) <= 1e-5


class BatchBranch(nn.Module):
    """Different computation at batch size 2 than at 3: no dynamic batch can represent it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) if x.shape[0] == 2 else torch.relu(self.lin(x))


def test_program_that_depends_on_the_batch_size_is_refused():
    with pytest.raises(RewriteError, match="computes differently at batch sizes 2 and 3 .*its batch cannot be made dynamic"):
        make_exportable(BatchBranch().eval(), (torch.randn(1, 4),))


class Opaque(torch.autograd.Function):
    """A Function whose forward reads raw memory, as a compiled extension does: untraceable."""

    @staticmethod
    def forward(ctx, x):
        assert x.data_ptr() != 0  # what a C++/CUDA kernel call does first
        return x * 2.0

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover
        return grad * 2.0


class UsesOpaque(nn.Module):
    def forward(self, x):
        return Opaque.apply(x) + 1


def test_untraceable_function_is_named(tmp_path):
    with pytest.raises(RewriteError, match=r"cannot trace through the autograd Function Opaque\.forward .*register a lowering"):
        export_onnx(UsesOpaque(), (torch.randn(2, 3),), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return x * 2 + self.strength * x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()


def test_gaussian_draws_become_zero_noise_with_a_note(tmp_path):
    model = Noisy().eval()
    form = make_exportable(model, (torch.randn(1, 2, 4, 4),))
    notes = rewrite_report(form).notes
    assert len(notes) == 1 and notes[0].rule == "graph:noise" and "zero noise" in notes[0].note
    x = torch.randn(3, 2, 4, 4)
    assert torch.equal(form(x), x * 2)
    path = export_onnx(model, (torch.randn(1, 2, 4, 4),), tmp_path / "noisy.onnx")
    assert not [n.op_type for n in onnx.load(str(path)).graph.node if "Random" in n.op_type]
