"""Make "SVF" a PEFT method: a ``PeftType`` member plus PEFT's config/tuner/prefix mappings.

PEFT keys everything on its ``PeftType`` enum, which has no extension hook, so the member is added the
way ``Enum`` builds its own members. Everything else goes through PEFT's public ``register_peft_method``.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

SVF_NAME = "SVF"


def _add_peft_type_member(name: str) -> PeftType:
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


SVF_PEFT_TYPE = _add_peft_type_member(SVF_NAME)


def register_svf() -> None:
    """Register SVFConfig/SVFModel with PEFT, and make failed SVF loads leave the model as it was (idempotent)."""
    from peft import PeftModel
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from .config import SVFConfig
    from .model import SVFModel, make_loads_transactional

    make_loads_transactional(PeftModel)
    if PEFT_TYPE_TO_TUNER_MAPPING.get(SVF_PEFT_TYPE) is SVFModel:
        return
    register_peft_method(
        name=SVF_NAME.lower(), config_cls=SVFConfig, model_cls=SVFModel, prefix=SVFModel.prefix
    )
