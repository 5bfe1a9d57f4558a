"""peft-svf: Transformer-Squared (Sun, Cetin, Tang, ICLR 2025) as a PEFT plugin.

Importing the package registers the "SVF" PEFT method, after which PEFT's own entry points
(``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM``...) handle SVF adapters.
The trainer and the tasks load on first use, so ``import peft_svf`` stays as light as PEFT itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from .svf import SVF_PEFT_TYPE, SVFConfig, SVFModel, convert_official, count_svf_parameters

__version__ = "0.1.0"

_LAZY = {
    "SVFTrainer": "peft_svf.trainer",
    "SVFTrainingConfig": "peft_svf.trainer",
    "tasks": "peft_svf.tasks",
    "Task": "peft_svf.tasks",
    "get_task": "peft_svf.tasks",
    "list_tasks": "peft_svf.tasks",
    "register_task": "peft_svf.tasks",
    "evaluate": "peft_svf.tasks",
    "EvalResult": "peft_svf.tasks",
    "checked_reward_call": "peft_svf.tasks",
    "RewardError": "peft_svf.tasks",
    "SelfAdaptiveModel": "peft_svf.adaptive",
    "mix_svf_adapters": "peft_svf.adaptive",
    "train_classification_expert": "peft_svf.adaptive",
}

__all__ = [
    "SVF_PEFT_TYPE",
    "SVFConfig",
    "SVFModel",
    "__version__",
    "convert_official",
    "count_svf_parameters",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'peft_svf' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if name == "tasks" else getattr(module, name)
