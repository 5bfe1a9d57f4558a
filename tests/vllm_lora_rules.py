"""vLLM's rules for loading a PEFT LoRA adapter, restated as written, to check exports where vLLM cannot run.

Sources (vllm-project/vllm):
  vllm/lora/peft_helper.py @ e745bafffc44744aa601169f8c6f325e47ca7cd5 -- ``PEFTHelper``: the required fields
    ``r``, ``lora_alpha``, ``target_modules`` (``from_dict``: "Missing required configuration fields");
    ``_validate_features``: "vLLM only supports modules_to_save being None.", "vLLM does not yet support
    DoRA."; ``__post_init__``: one scaling for the whole adapter, ``lora_alpha / r`` (``/ sqrt(r)`` with
    ``use_rslora``); ``validate_legal``: ``r <= max_lora_rank``, and ``bias != "none"`` needs
    ``bias_enabled`` (later versions type ``bias`` as ``Literal["none"]``). Unknown fields such as
    ``rank_pattern`` / ``alpha_pattern`` are dropped by ``from_dict``.
  vllm/config/lora.py @ a78dc92f43ae2471dd40675a47079aa1a9a157c1 -- ``MaxLoRARanks = Literal[1, 8, 16, 32,
    64, 128, 256, 320, 512]``: no server accepts an adapter with ``r`` above 512.
  vllm/lora/utils.py @ 0fd157078c53638b7ffc9ce7f2c8b8d7ef7a7d28 -- ``parse_fine_tuned_lora_name``: a weight
    name ends in ``lora_A.weight`` / ``lora_B.weight`` (or ``lora_embedding_A`` / ``lora_embedding_B``), else
    "is unsupported LoRA weight"; ``get_supported_lora_modules``: "In vLLM, all linear layers support LoRA".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors import safe_open

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
REQUIRED_FIELDS = ("r", "lora_alpha", "target_modules")
PREFIX = "base_model.model."


def vllm_violations(adapter_dir: str | Path) -> list[str]:
    """What vLLM would refuse, or serve differently from PEFT, in a saved LoRA adapter; empty if nothing."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    problems = [f"missing required field {f!r}" for f in REQUIRED_FIELDS if f not in config]
    if problems:
        return problems
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    if config.get("modules_to_save"):
        problems.append("vLLM only supports modules_to_save being None.")
    if config.get("use_dora"):
        problems.append("vLLM does not yet support DoRA.")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']!r} needs bias_enabled (later vLLM: only 'none')")
    r = config["r"]
    if not 1 <= r <= max(MAX_LORA_RANKS):
        problems.append(f"r={r} above the largest max_lora_rank {max(MAX_LORA_RANKS)}")
    # vLLM applies one scaling, lora_alpha / r (sqrt with rsLoRA), and drops rank/alpha_pattern: PEFT's
    # per-layer scaling alpha_k / r_k must equal it for both to compute the same change.
    scaling = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    for module in set(ranks) | set(alphas):
        rank, alpha = ranks.get(module, r), alphas.get(module, config["lora_alpha"])
        layer_scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        if not math.isclose(layer_scaling, scaling):
            problems.append(f"{module}: PEFT scaling {layer_scaling} differs from vLLM's {scaling}")
    problems += _weight_violations(adapter_dir / "adapter_model.safetensors", r)
    return problems


def _weight_violations(weights: Path, r: int) -> list[str]:
    problems = []
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            parts = name.removeprefix(PREFIX).split(".")
            if parts[-2:] not in (["lora_A", "weight"], ["lora_B", "weight"]):
                problems.append(f"{name} is unsupported LoRA weight")
                continue
            shape = f.get_slice(name).get_shape()
            rank = shape[0] if parts[-2] == "lora_A" else shape[1]
            if rank > r:
                problems.append(f"{name} has rank {rank}, above the adapter's r={r} (vLLM's slots)")
    return problems
