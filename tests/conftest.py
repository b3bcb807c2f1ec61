"""Shared fixtures: small seed-layer models (exporting is slow, so tests share what they can).

Helpers that tests import live in ``helpers.py``; this file holds only pytest fixtures.
"""

from __future__ import annotations

import pytest
import torch

from helpers import TinyDecoder, randomize


@pytest.fixture(scope="session")
def tiny_decoder() -> TinyDecoder:
    torch.manual_seed(0)
    return randomize(TinyDecoder(), seed=0)


@pytest.fixture(scope="session")
def tiny_args() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 10, 10, generator=gen), torch.randn(2, 16, generator=gen)


#: Markers by test file (registered in pyproject.toml), so that a run can pick: ``-m "not slow and not fuzz"``.
_MARKED_FILES = {
    "upstream": {"test_upstream_codebases.py", "test_rosinality_upstream.py", "test_families_upstream.py", "test_nvlabs_upstream.py"},
    "fuzz": {"test_fuzz.py", "test_bombs.py"},
    "slow": {"test_blur_grad.py", "test_bench.py", "test_export_cost.py", "test_gpu_check.py"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker, files in _MARKED_FILES.items():
            if item.path.name in files:
                item.add_marker(marker)
