"""The main job (README command 1): the whole Transformer² loop, from training experts to Table 2."""

from .config import FULL, QUICK, PipelineConfig
from .run import main, run_pipeline

__all__ = ["FULL", "QUICK", "PipelineConfig", "main", "run_pipeline"]
