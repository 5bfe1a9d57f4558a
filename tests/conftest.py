"""Shared fixtures: an isolated SVD cache per test and a fixed batch of token ids."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_svd_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own SVD cache, so cache hits are only the ones a test makes."""
    directory = tmp_path_factory.mktemp("svd_cache")
    monkeypatch.setattr("peft_svf.svf.decomposition.default_svd_cache_dir", lambda: directory)
    return directory


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
