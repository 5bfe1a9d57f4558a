"""REINFORCE training of PEFT adapters (SVF experts first) in the TRL style."""

from .config import SVFTrainingConfig
from .rewards import score_completions
from .trainer import SVFTrainer

__all__ = ["SVFTrainer", "SVFTrainingConfig", "score_completions"]
