"""Import expert vectors saved by the authors' research code as standard SVF adapter folders.

Their experts are ``torch.save`` files holding a dict from a base weight name
(``model.layers.3.mlp.gate_proj.weight``) to the learned vector ``p`` of the official parameterisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import SVFConfig

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def load_official_vectors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an authors' expert file. Only tensors are accepted (``weights_only=True``, never unpickling code)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path}: expected a non-empty dict from weight names to vectors, got {type(data).__name__}"
        )
    vectors = {}
    for name, value in data.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor) or value.dim() != 1:
            raise ValueError(f"{path}: entry {name!r} is not a 1-D tensor keyed by a weight name")
        vectors[name] = value.detach().float().contiguous()
    return vectors


def convert_official(
    official_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    max_mult: float = 1.0,
    **config_kwargs,
) -> Path:
    """Write an SVF adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) from an authors' file.

    The result loads with ``PeftModel.from_pretrained(base, output_dir)`` like any PEFT adapter.
    """
    vectors = load_official_vectors(official_file)
    modules = sorted(name.removesuffix(".weight") for name in vectors)
    config = SVFConfig(
        target_modules=modules,
        parameterization="official",
        max_mult=max_mult,
        base_model_name_or_path=base_model_name_or_path,
        task_type="CAUSAL_LM",
        **config_kwargs,
    )
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(output))
    state = {f"base_model.model.{name.removesuffix('.weight')}.svf_vector": v for name, v in vectors.items()}
    save_file(state, str(output / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    return output
