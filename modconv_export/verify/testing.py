"""Pytest-friendly parity assertion, so users keep "the exported file equals the model" in their own CI.

def test_generator_onnx_matches():
    model = build_generator().eval()
    args = (torch.randn(1, 3, 64, 64), torch.randn(1, 256))
    export_onnx(model, args, "gen.onnx")
    assert_parity(model, args, onnx_path="gen.onnx")
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .harness import check_parity
from .report import ParityReport

__all__ = ["assert_parity"]


def assert_parity(model: nn.Module, args: Any, **check_parity_kwargs: Any) -> ParityReport:
    """Run :func:`~modconv_export.verify.check_parity` and raise ``AssertionError`` unless it passed.

    The assertion message is the report's table, so a failing test shows every backend's numbers and
    every "not run" reason. Returns the report when it passed (for further checks).
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    report = check_parity(model, args, **check_parity_kwargs)
    if not report.passed:
        raise AssertionError("parity check failed\n" + report.format_table())
    return report
