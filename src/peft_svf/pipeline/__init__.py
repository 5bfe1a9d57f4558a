"""The main job (README command 1): the whole Transformer² loop, from training experts to Table 2."""

from __future__ import annotations

import logging
from typing import Any

from .config import FULL, QUICK, PipelineConfig, parse_args

__all__ = ["FULL", "QUICK", "PipelineConfig", "main", "run_pipeline"]


def main(argv: list[str] | None = None) -> int:
    """``peft-svf run``: the flags are read (and ``--help`` answered) before the trainer stack is imported."""
    config = parse_args(argv)
    from .run import run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_pipeline(config)
    return 0


def __getattr__(name: str) -> Any:
    if name == "run_pipeline":  # imports torch, transformers and TRL: only when the job runs
        from .run import run_pipeline

        return run_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
