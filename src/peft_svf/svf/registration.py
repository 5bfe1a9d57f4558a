"""Make "SVF" a PEFT method: PEFT's config/tuner/prefix mappings, through its public ``register_peft_method``.

The ``PeftType`` member it needs lives in :mod:`peft_svf.svf.peft_type`, which imports nothing of this
package, so the config can name its type without importing the tuner that this module registers.
"""

from __future__ import annotations

from peft import PeftModel
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from .config import SVFConfig
from .model import SVFModel, make_loads_transactional
from .peft_type import SVF_NAME, SVF_PEFT_TYPE


def register_svf() -> None:
    """Register SVFConfig/SVFModel with PEFT, and make failed SVF loads leave the model as it was (idempotent)."""
    make_loads_transactional(PeftModel)
    if PEFT_TYPE_TO_TUNER_MAPPING.get(SVF_PEFT_TYPE) is SVFModel:
        return
    register_peft_method(
        name=SVF_NAME.lower(), config_cls=SVFConfig, model_cls=SVFModel, prefix=SVFModel.prefix
    )
