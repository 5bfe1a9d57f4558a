"""The ``PeftType`` member "SVF": PEFT keys everything on its ``PeftType`` enum, which has no extension hook.

The member is added the way ``Enum`` builds its own members. Kept apart from the registration (which needs
the config and the tuner) so that the config can import it without an import cycle.
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
