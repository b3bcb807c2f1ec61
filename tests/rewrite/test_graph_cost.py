"""What the graph rewrite costs, by construction rather than by the clock: the proofs read weight chains,
never feature maps; evaluation frees what it no longer needs; the ONNX export traces nothing again;
the metric keeps no float64 copies. Speed and memory themselves are benchmark figures
(``benchmarks/export_cost.py``), not timed tests.
"""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch.utils._python_dispatch import TorchDispatchMode

import modconv_export._util as util
from modconv_export import export_onnx, make_exportable, rewrite_report
from modconv_export.rewrite import RuleRegistry, use_rules
from modconv_export.rewrite.graph import evaluate as evaluation
from modconv_export.rewrite.graph.grouped_conv import CONV_OPS

from fixtures.foreign_layers import novel_stylegan
from helpers import relative_l2, run_exported

CONV = "graph:batch_grouped_conv"
CONVOLUTIONS = {op.overloadpacket for op in CONV_OPS}


def _inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 16, 16, generator=gen), torch.randn(batch, 12, generator=gen)


class _RealConvolutions(TorchDispatchMode):
    """Records the shapes of the inputs of every convolution run on real CPU tensors (fake and meta
    tensors -- the capture's and the construction check's -- carry no numbers and are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in CONVOLUTIONS:
            x = args[0]
            if type(x) is torch.Tensor and x.device.type == "cpu":
                self.inputs.append(tuple(x.shape))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def novel():
    return novel_stylegan.build()


def test_proofs_never_run_a_convolution_on_numbers(novel, monkeypatch):
    """Every batch-grouped conv is proven on its weight chain: no convolution runs on a feature map."""
    with _RealConvolutions() as seen:
        form = make_exportable(novel, _inputs(1, 0), strict=True, rules=RuleRegistry())
    assert {done.path for done in rewrite_report(form).rewritten if done.rule == CONV} == {"stem", "down", "up", "out"}
    assert seen.inputs == []
    x = _inputs(4, 1)
    with torch.no_grad():
        assert relative_l2(form(*x), novel(*x)) <= 1e-5


def test_onnx_export_traces_the_model_once(novel, monkeypatch, tmp_path):
    """The rewritten graph reaches the ONNX exporter as a program: ``torch.export`` runs for the capture only."""
    calls = []
    real = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    with use_rules(RuleRegistry()):
        path = export_onnx(novel, _inputs(1, 0), tmp_path / "novel.onnx")
    assert len(calls) == 1
    for batch in (1, 3):
        x = _inputs(batch, 10 + batch)
        with torch.no_grad():
            assert relative_l2(run_exported("onnx", path, x), novel(*x).numpy()) <= 1e-4


def _chain() -> tuple[fx.GraphModule, list[fx.Node]]:
    graph = fx.Graph()
    x = graph.placeholder("x")
    nodes = [x]
    for i in range(6):
        nodes.append(graph.call_function(operator.mul if i % 2 else operator.add, (nodes[-1], 1.5)))
    graph.output(nodes[-1])
    return fx.GraphModule(torch.nn.Module(), graph), nodes


def test_evaluation_frees_each_value_after_its_last_reader(monkeypatch):
    gm, nodes = _chain()
    live = []
    real = evaluation._run
    monkeypatch.setattr(evaluation, "_run", lambda gm, node, env: live.append(len(env)) or real(gm, node, env))
    x = torch.randn(4)
    values = evaluation.evaluate_many(gm, [nodes[3], nodes[-1]], {nodes[0]: x})
    expected = x
    for i in range(6):
        expected = expected * 1.5 if i % 2 else expected + 1.5
        if i == 2:
            assert torch.equal(values[nodes[3]], expected)
    assert torch.equal(values[nodes[-1]], expected)
    # the input, a wanted value and the one value being read: never the whole chain
    assert max(live) <= 3, live
    with pytest.raises(KeyError, match="needs the input x"):
        evaluation.evaluate_many(gm, [nodes[-1]], {})


def test_relative_l2_in_chunks_equals_float64(monkeypatch):
    monkeypatch.setattr(util, "_CHUNK", 1000)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1001, 7, generator=gen)
    e = a + 1e-3 * torch.randn(a.shape, generator=gen)
    reference = float(np.linalg.norm(a.double().numpy() - e.double().numpy()) / np.linalg.norm(e.double().numpy()))
    assert util.relative_l2(a, e) == pytest.approx(reference, rel=1e-5)
    assert util.relative_l2(a.numpy(), e) == pytest.approx(reference, rel=1e-5)
    assert util.relative_l2(a.half(), e) == pytest.approx(reference, rel=0.5)  # float16 rounding is the difference
    assert util.relative_l2(torch.zeros(5), torch.zeros(5)) == 0.0
    assert util.relative_l2(torch.ones(2, 3), torch.ones(3)) == 0.0  # broadcast reference
    assert util.relative_l2(torch.full((4,), 2.0), torch.zeros(4)) == 4.0  # absolute where the reference is zero
