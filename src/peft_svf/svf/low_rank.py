"""Exact low-rank forms of an SVF change, for LoRA exports and low-rank forwards.

An SVF layer's change ``Δ = U diag(c) V^T`` (``c = s' - s``) is already a singular value decomposition, up to
the signs and order of ``c``: its best rank-k approximation (Eckart–Young) keeps the k components with the
largest ``|c_i|``, so ``B = U_k diag(c_k)``, ``A = V_k^T`` is the optimal rank-k LoRA, found by a sort instead
of a dense SVD of ``Δ``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from peft import LoraConfig
from torch import nn
from transformers.pytorch_utils import Conv1D

from .layer import SVFLayer


class LoraFactors(NamedTuple):
    """A change as LoRA factors, ``Δ ≈ lora_B @ lora_A`` in the (out_features, in_features) frame."""

    lora_A: torch.Tensor  # (rank, in_features)
    lora_B: torch.Tensor  # (out_features, rank)
    rank: int
    energy: float  # share of ``sum(c_i^2)`` the kept components carry


def top_components(change: torch.Tensor, rank_or_energy: int | float) -> torch.Tensor:
    """Indices of the components of ``change`` to keep, largest ``|c_i|`` first.

    An ``int`` keeps that many components (all of them if the layer has fewer); a ``float`` in ``(0, 1]``
    keeps the fewest whose share of ``sum(c_i^2)`` reaches it, the meaning of ``rank`` as a float in PEFT's
    ``convert_to_lora`` (at least one component, so a zero change keeps one zero component).
    """
    if change.dim() != 1:
        raise ValueError(f"Expected a vector of singular-value changes, got shape {tuple(change.shape)}.")
    if isinstance(rank_or_energy, bool) or not isinstance(rank_or_energy, (int, float)):
        raise TypeError(
            f"rank_or_energy must be an int rank or a float energy share, got {rank_or_energy!r}."
        )
    if isinstance(rank_or_energy, int) and rank_or_energy < 1:
        raise ValueError(f"A rank must be at least 1, got {rank_or_energy}.")
    if isinstance(rank_or_energy, float) and not 0 < rank_or_energy <= 1:
        raise ValueError(f"An energy share must be in (0, 1], got {rank_or_energy}.")
    order = torch.argsort(change.abs(), descending=True, stable=True)
    if isinstance(rank_or_energy, int):
        return order[:rank_or_energy]
    cumulative = torch.cumsum(change[order].double() ** 2, dim=0)
    # Smallest k with cumulative[k - 1] >= share * total, as PEFT's _find_cutoff_index computes it.
    count = int(torch.searchsorted(cumulative, rank_or_energy * cumulative[-1]).item()) + 1
    return order[: min(count, order.numel())]


def energy_share(change: torch.Tensor, indices: torch.Tensor) -> float:
    """Share of the change's energy ``sum(c_i^2)`` that the components ``indices`` carry (1 for no change)."""
    energy = change.double() ** 2
    total = energy.sum()
    return 1.0 if total == 0 else float(energy[indices].sum() / total)


def truncated_factors(
    U: torch.Tensor,
    change: torch.Tensor,
    Vh: torch.Tensor,
    rank_or_energy: int | float,
    dtype: torch.dtype | None = None,
) -> LoraFactors:
    """The best low-rank LoRA factors of ``U diag(change) Vh`` (``U``: out x r, ``Vh``: r x in), in ``dtype``.

    The factors keep the logical (out, in) frame for every base type, which is PEFT's LoRA layout also for
    transformers' ``Conv1D`` (its ``lora_A`` maps inputs, ``lora_B`` produces outputs; only merging transposes).
    """
    indices = top_components(change, rank_or_energy)
    dtype = dtype or U.dtype
    lora_B = U[:, indices].float() * change[indices].float()
    lora_A = Vh[indices].float()
    return LoraFactors(
        lora_A=lora_A.to(dtype).contiguous(),
        lora_B=lora_B.to(dtype).contiguous(),
        rank=int(indices.numel()),
        energy=energy_share(change, indices),
    )


# vLLM's largest ``max_lora_rank`` (``MaxLoRARanks`` in vllm/config/lora.py); a served adapter's r must not exceed it.
VLLM_MAX_LORA_RANK = 512
_MODEL_PREFIX = "base_model.model."


@dataclass
class LoraExport:
    """An SVF adapter as a PEFT LoRA checkpoint: its config, its state dict (PEFT's saved key names), and
    per layer the rank kept and the share of the change's energy it carries."""

    config: LoraConfig
    state_dict: dict[str, torch.Tensor]
    ranks: dict[str, int] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)

    @property
    def mean_energy(self) -> float:
        return sum(self.energy.values()) / max(len(self.energy), 1)


def svf_to_lora(
    model: nn.Module,
    adapter_name: str,
    rank_or_energy: int | float,
    max_rank: int | None = VLLM_MAX_LORA_RANK,
    dtype: torch.dtype | None = None,
) -> LoraExport:
    """The exact truncation of adapter ``adapter_name`` of an SVF ``PeftModel`` as LoRA (scaling 1).

    Like PEFT's ``convert_to_lora``, but each layer's factors come from its own decomposition (no dense
    SVD), and the layout is one vLLM serves: ``lora_alpha = r``, per-layer ranks in ``rank_pattern`` with
    equal ``alpha_pattern`` (so every layer's scaling, and vLLM's single ``lora_alpha / r``, is 1). A rank
    above ``max_rank`` (vLLM's 512 by default; ``None`` for no cap) is refused, not silently cut.
    """
    peft_config = model.peft_config[adapter_name]
    if getattr(peft_config, "modules_to_save", None):
        raise ValueError(
            f"adapter {adapter_name!r} has modules_to_save={peft_config.modules_to_save}: a LoRA export "
            "carries only the low-rank changes (and vLLM refuses modules_to_save)"
        )
    state_dict: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    energy: dict[str, float] = {}
    conv1d: list[bool] = []
    for name, layer in model.named_modules():
        if not isinstance(layer, SVFLayer) or adapter_name not in layer.svf_vector:
            continue
        module = name.removeprefix(_MODEL_PREFIX)
        with torch.no_grad():
            factors = truncated_factors(
                layer.svf_U, layer.singular_value_change([adapter_name]), layer.svf_Vh, rank_or_energy, dtype
            )
        if max_rank is not None and factors.rank > max_rank:
            raise ValueError(
                f"{module} would get rank {factors.rank}, above vLLM's max_lora_rank {max_rank}; choose "
                f"--lora-rank {max_rank} or less, or a lower --lora-energy (or lift the cap for PEFT-only use)"
            )
        state_dict[f"{_MODEL_PREFIX}{module}.lora_A.weight"] = factors.lora_A
        state_dict[f"{_MODEL_PREFIX}{module}.lora_B.weight"] = factors.lora_B
        ranks[module], energy[module] = factors.rank, factors.energy
        conv1d.append(isinstance(layer.get_base_layer(), Conv1D))
    if not ranks:
        raise ValueError(f"no SVF layer of the model holds adapter {adapter_name!r}")
    r = max(ranks.values())
    others = {module: rank for module, rank in ranks.items() if rank != r}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(ranks),
        rank_pattern=others,
        alpha_pattern=dict(others),
        fan_in_fan_out=all(conv1d),
        base_model_name_or_path=peft_config.base_model_name_or_path,
        revision=peft_config.revision,
        task_type=peft_config.task_type,
    )
    return LoraExport(config=config, state_dict=state_dict, ranks=ranks, energy=energy)
