"""The main job (README command 1): the whole Transformer² loop, from training experts to Table 2."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from .config import FULL, QUICK, PipelineConfig, parse_args

__all__ = [
    "FULL",
    "QUICK",
    "PipelineConfig",
    "aggregate_seeds",
    "bootstrap_ci",
    "main",
    "run_pipeline",
    "run_seeds",
]

_LAZY = {  # name: submodule; imported on first use (run imports torch, transformers and TRL)
    "run_pipeline": "run",
    "run_seeds": "run",
    "aggregate_seeds": "aggregate",
    "bootstrap_ci": "aggregate",
}


def main(argv: list[str] | None = None) -> int:
    """``peft-svf run``: the flags are read (and ``--help`` answered) before the trainer stack is imported."""
    config = parse_args(argv)
    from .run import run_pipeline, run_seeds

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if config.seeds:  # --seeds: one job per seed, then the statistics over seeds
        run_seeds(config)
    else:
        run_pipeline(config)
    return 0


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # only when the job runs (or its statistics are wanted)
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
