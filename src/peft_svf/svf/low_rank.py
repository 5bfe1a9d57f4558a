"""Exact low-rank forms of an SVF change, for LoRA exports and low-rank forwards.

An SVF layer's change ``Δ = U diag(c) V^T`` (``c = s' - s``) is already a singular value decomposition, up to
the signs and order of ``c``: its best rank-k approximation (Eckart–Young) keeps the k components with the
largest ``|c_i|``, so ``B = U_k diag(c_k)``, ``A = V_k^T`` is the optimal rank-k LoRA, found by a sort instead
of a dense SVD of ``Δ``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


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
