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
