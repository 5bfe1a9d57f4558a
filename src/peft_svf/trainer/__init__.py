"""REINFORCE training of PEFT adapters (SVF experts first) in the TRL style.

The exports load on first use, so that ``python -m peft_svf.trainer --help`` (the alias of ``peft-svf train``)
answers without importing transformers and TRL.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SVFTrainer": ".trainer",
    "SVFTrainingConfig": ".config",
    "train_expert": ".recipe",
    "recipe_beta": ".recipe",
    "recipe_bf16": ".recipe",
    "recipe_candidates": ".recipe",
    "recipe_learning_rate": ".recipe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
