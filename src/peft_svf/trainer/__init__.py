"""REINFORCE training of PEFT adapters (SVF experts first) in the TRL style."""

from .config import SVFTrainingConfig
from .recipe import train_expert
from .trainer import SVFTrainer

__all__ = ["SVFTrainer", "SVFTrainingConfig", "train_expert"]
