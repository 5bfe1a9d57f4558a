"""Singular Value Fine-tuning as a PEFT method (config, layers, tuner) and its registration."""

from .config import SVFConfig
from .convert import convert_official
from .counting import count_svf_parameters
from .layer import Linear, SVFLayer
from .model import SVFModel
from .peft_type import SVF_PEFT_TYPE
from .registration import register_svf

register_svf()

__all__ = [
    "SVF_PEFT_TYPE",
    "Linear",
    "SVFConfig",
    "SVFLayer",
    "SVFModel",
    "convert_official",
    "count_svf_parameters",
]
