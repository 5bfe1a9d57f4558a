"""Configuration of Singular Value Fine-tuning adapters."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from peft.config import PeftConfig

from .peft_type import SVF_PEFT_TYPE

PARAMETERIZATIONS = ("official", "scale")
FORWARD_MODES = ("auto", "recompose", "factored")
SVD_DTYPES = ("float32", "float64")
FACTORS_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Settings of the machine that runs the adapter, not of the adapter: never saved, never taken from a file.
LOCAL_FIELDS = ("svd_cache", "svd_cache_dir")


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
            Both are settings of this machine (``LOCAL_FIELDS``): ``save_pretrained`` does not write them and
            a config read from a saved adapter (recognised by its ``peft_type``, which every saved
            ``adapter_config.json`` holds) ignores them, with a warning when they differ from the defaults.
        forward_mode: ``"recompose"`` builds ``W + U diag(s' - s) V^T`` once per forward; ``"factored"``
            adds ``U ((s' - s) * (V^T x))`` to the base output; ``"auto"`` picks the cheaper one from the
            number of tokens and the matrix shape, and in training (gradients on a dense base) may compute
            ``U (s' * (V^T x))`` without ``W x``, exact to float precision. Per adapter; adapters used together
            that disagree get ``"auto"``.
        keep_base_weight: ``False`` frees ``W`` after decomposition and computes with ``U diag(s') V^T``
            (saves memory; ``W`` is rebuilt from its factors on merge or unload, to float precision).
        init_weights: ``True`` starts every vector at the identity (plus ``init_noise_std`` noise); ``False``
            adds standard normal noise to it, so a fresh adapter already changes the model (as IA3's and
            VeRA's ``init_weights=False``; for tests of merging, saving and loading).

    ``keep_base_weight``, ``svd_dtype`` and ``factors_dtype`` shape the one decomposition per layer that all of
    a model's adapters share: a later adapter must use the first one's values (``ValueError`` otherwise).
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
    init_weights: bool = field(
        default=True, metadata={"help": "False starts from a random non-identity vector (for tests)."}
    )

    def __post_init__(self) -> None:
        loaded = self.peft_type is not None  # a saved adapter_config.json always names its peft_type
        super().__post_init__()
        self.peft_type = SVF_PEFT_TYPE
        if loaded:
            self._reset_local_fields()
        self._validate()
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)

    def to_dict(self) -> dict[str, Any]:
        """The saved (and pushed) form: without this machine's cache settings."""
        return {key: value for key, value in super().to_dict().items() if key not in LOCAL_FIELDS}

    def _reset_local_fields(self) -> None:
        defaults = {f.name: f.default for f in fields(self) if f.name in LOCAL_FIELDS}
        changed = {
            name: getattr(self, name) for name, default in defaults.items() if getattr(self, name) != default
        }
        if changed:
            warnings.warn(
                f"Ignoring {changed} from a saved SVF adapter config: where and whether SVD factors are cached "
                "is a setting of this machine (set $PEFT_SVF_CACHE, or pass them to SVFConfig yourself).",
                stacklevel=3,
            )
        for name, default in defaults.items():
            setattr(self, name, default)

    def _validate(self) -> None:
        """Reject values of the wrong type or range with the field's name (configs also come from files)."""
        _check_names("target_modules", self.target_modules)
        _check_names("exclude_modules", self.exclude_modules)
        _check_names("layers_pattern", self.layers_pattern)
        _check_names("modules_to_save", self.modules_to_save, allow_str=False)
        layers = self.layers_to_transform
        indices = [layers] if _is_int(layers) else layers
        if layers is not None and not (
            isinstance(indices, list) and all(_is_int(i) and i >= 0 for i in indices)
        ):
            raise ValueError(
                f"SVFConfig.layers_to_transform must be layer indices (ints >= 0), got {layers!r}"
            )
        if self.layers_pattern and layers is None:
            raise ValueError("layers_pattern is only used together with layers_to_transform.")
        _check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        _check_choice("forward_mode", self.forward_mode, FORWARD_MODES)
        _check_choice("svd_dtype", self.svd_dtype, SVD_DTYPES)
        if self.factors_dtype is not None:
            _check_choice("factors_dtype", self.factors_dtype, FACTORS_DTYPES)
        _check_number("init_value", self.init_value)
        _check_number("init_noise_std", self.init_noise_std, minimum=0.0)
        _check_number("max_mult", self.max_mult, minimum=0.0, strict=True)
        for name in ("svd_cache", "keep_base_weight", "init_weights", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SVFConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.svd_cache_dir is not None and not isinstance(self.svd_cache_dir, (str, os.PathLike)):
            raise ValueError(f"SVFConfig.svd_cache_dir must be a path or None, got {self.svd_cache_dir!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_names(name: str, value: Any, allow_str: bool = True) -> None:
    if value is None or (allow_str and isinstance(value, str)):
        return
    if isinstance(value, (list, set, tuple)) and all(isinstance(item, str) for item in value):
        return
    kinds = "a string (regex), a list of strings or None" if allow_str else "a list of strings or None"
    raise ValueError(f"SVFConfig.{name} must be {kinds}, got {value!r} ({type(value).__name__})")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"SVFConfig.{name} must be one of {choices}, got {value!r}")


def _check_number(name: str, value: Any, minimum: float | None = None, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"SVFConfig.{name} must be a finite number, got {value!r} ({type(value).__name__})")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"SVFConfig.{name} must be {bound}, got {value!r}")
