"""Shared fixtures: an isolated SVD cache per test, a fixed batch of token ids, a saved tiny model and experts."""

from __future__ import annotations

import pytest
import torch

from trainer_fixtures import save_random_experts, save_tiny_model


@pytest.fixture(scope="session")
def embedded_svd_cache(tmp_path_factory):
    """One SVD cache for all tests of the real embedded model: its 210 decompositions take a while."""
    return tmp_path_factory.mktemp("embedded_svd_cache")


@pytest.fixture(autouse=True)
def isolated_svd_cache(request, tmp_path_factory, monkeypatch):
    """Every tiny-model test gets its own SVD cache, so cache hits are only the ones a test makes."""
    if request.node.get_closest_marker("embedded"):
        directory = request.getfixturevalue("embedded_svd_cache")
    else:
        directory = tmp_path_factory.mktemp("svd_cache")
    monkeypatch.setattr("peft_svf.svf.decomposition.default_svd_cache_dir", lambda: directory)
    return directory


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama and its character tokenizer (with a chat template), saved like a Hub model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def experts(model_dir, tmp_path_factory):
    """Two SVF experts of ``model_dir`` ("math", "code"), made different by their random initial vectors."""
    return save_random_experts(model_dir, tmp_path_factory.mktemp("experts"))
