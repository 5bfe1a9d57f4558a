"""Configuration of Singular Value Fine-tuning adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from .registration import SVF_PEFT_TYPE

PARAMETERIZATIONS = ("official", "scale")
FORWARD_MODES = ("auto", "recompose", "factored")
SVD_DTYPES = ("float32", "float64")


@dataclass
class SVFConfig(PeftConfig):
    """Configuration for an SVF adapter (Transformer², Sun et al. 2025, section 3.2).

    Every targeted weight ``W = U diag(s) V^T`` (reduced SVD) gets one learned vector of length
    ``min(m, n)`` that rescales its singular values.

    Args:
        target_modules: Module names, a regex, or ``"all-linear"``. ``None`` picks attention and MLP
            projections for known architectures (the paper's Table 4 best setting) and every linear layer
            but the output head otherwise.
        exclude_modules: Names or regex of modules never to adapt.
        layers_to_transform / layers_pattern: Restrict to some layer indices, as in LoRA.
        parameterization: ``"official"`` (the authors' code: learned ``p``, ``mask = sigmoid(p) * max_mult``,
            ``s' = s * mask * sum(s) / sum(s * mask)``, so their expert files and recipe carry over) or
            ``"scale"`` (``s' = s * z``, ``z`` starts at 1).
        init_value: Initial ``p`` for ``"official"`` (authors: 0.1). Any constant is the identity.
        init_noise_std: Std of Gaussian noise added at initialisation (authors: 0.01). 0 makes a fresh
            adapter reproduce the base model exactly, which is PEFT's convention, hence the default.
        max_mult: Upper bound of the ``"official"`` mask.
        svd_dtype: Precision of the decomposition ("float32" or "float64"), whatever the model's dtype.
        factors_dtype: dtype in which ``U`` and ``V`` are kept (``None``: the base layer's compute dtype).
            Singular values are always kept in float32.
        svd_cache: Cache decompositions on disk (safetensors, keyed by a hash of the weight values).
        svd_cache_dir: Where; ``None`` means ``~/.cache/peft_svf/svd`` (or ``$PEFT_SVF_CACHE/svd``).
        forward_mode: ``"recompose"`` builds ``W + U diag(s' - s) V^T`` once per forward; ``"factored"``
            adds ``U ((s' - s) * (V^T x))`` to the base output; ``"auto"`` picks the cheaper one from the
            number of tokens and the matrix shape.
        keep_base_weight: ``False`` frees ``W`` after decomposition and computes with ``U diag(s') V^T``
            (saves memory; ``W`` is rebuilt from its factors on merge or unload, to float precision).
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names or regex to adapt; 'all-linear'; None = per-architecture default."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or regex to exclude."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Layer indices to adapt (as in LoRA)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list attribute, used with layers_to_transform."}
    )
    parameterization: Literal["official", "scale"] = field(
        default="official", metadata={"help": "'official' (sigmoid mask, mass-renormalised) or 'scale'."}
    )
    init_value: float = field(default=0.1, metadata={"help": "Initial p for the official parameterisation."})
    init_noise_std: float = field(default=0.0, metadata={"help": "Std of the initial noise (authors: 0.01)."})
    max_mult: float = field(default=1.0, metadata={"help": "Upper bound of the official mask."})
    svd_dtype: Literal["float32", "float64"] = field(
        default="float32", metadata={"help": "Precision of the SVD computation."}
    )
    factors_dtype: str | None = field(
        default=None, metadata={"help": "dtype of the stored U and V; None = base layer compute dtype."}
    )
    svd_cache: bool = field(default=True, metadata={"help": "Cache decompositions on disk."})
    svd_cache_dir: str | None = field(default=None, metadata={"help": "SVD cache folder."})
    forward_mode: Literal["auto", "recompose", "factored"] = field(
        default="auto", metadata={"help": "How the adapted layer computes its output."}
    )
    keep_base_weight: bool = field(
        default=True, metadata={"help": "False frees W after decomposing it, to save memory."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules to train and save, as in other PEFT methods."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SVF_PEFT_TYPE
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}"
            )
        if self.forward_mode not in FORWARD_MODES:
            raise ValueError(f"forward_mode must be one of {FORWARD_MODES}, got {self.forward_mode!r}")
        if self.svd_dtype not in SVD_DTYPES:
            raise ValueError(f"svd_dtype must be one of {SVD_DTYPES}, got {self.svd_dtype!r}")
        if self.max_mult <= 0:
            raise ValueError(f"max_mult must be positive, got {self.max_mult}")
        if self.init_noise_std < 0:
            raise ValueError(f"init_noise_std must be >= 0, got {self.init_noise_std}")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern is only used together with layers_to_transform.")
