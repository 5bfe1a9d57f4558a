"""peft-svf: Transformer-Squared (Sun, Cetin, Tang, ICLR 2025) as a PEFT plugin.

Importing the package registers the "SVF" PEFT method, after which PEFT's own entry points
(``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModelForCausalLM``...) handle SVF adapters.
"""

from .svf import SVF_PEFT_TYPE, SVFConfig, SVFModel, convert_official, count_svf_parameters

__version__ = "0.1.0"

__all__ = [
    "SVF_PEFT_TYPE",
    "SVFConfig",
    "SVFModel",
    "__version__",
    "convert_official",
    "count_svf_parameters",
]
