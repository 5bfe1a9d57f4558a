"""Count SVF's learned values from module shapes alone (works on the meta device: no weights, no SVD)."""

from __future__ import annotations

import copy

from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import SVFConfig
from .model import SVFModel


def count_svf_parameters(model: nn.Module, config: SVFConfig) -> int:
    """Sum of ``min(m, n)`` over the weights ``config`` would adapt in ``model``."""
    prepared = SVFModel._prepare_adapter_config(copy.deepcopy(config), BaseTuner.get_model_config(model))
    if prepared.target_modules == "all-linear":
        from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

        prepared = _maybe_include_all_linear_layers(prepared, model)
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or not check_target_module_exists(prepared, name):
            continue
        total += min(module.weight.shape)
    return total
