"""Per-row adapters for a whole ``generate`` call: each layer's per-row change is worked out once, not per token.

A mixed batch (``model(..., adapter_names=rows)``) computes ``W x + U ((s'_row - s) * (V^T x))``: exact,
but every token reads the full ``U`` and ``V`` beside ``W``, and every forward recomputes each row's gain.
Inside :func:`per_row_adapters` the SVF layers keep, for the rows they last saw, either

- the exact per-row changes ``s'_row - s`` (``rank=None``: same outputs, no gain recomputed per step), or
- each row adapter's best rank-k change (Eckart–Young: the components with the largest ``|s_i (g_i - 1)|``,
  see :mod:`peft_svf.svf.low_rank`), applied as ``W x + B_e (A_e x)``, which reads ``k (m + n)`` numbers per
  adapter instead of ``r (m + n)``.

The low-rank factors take one of two layouts, whichever the cost rule below finds cheaper per decode step:
*stacked* (all adapters' components side by side, masked per row: one matmul pair over every row, best for a
few distinct adapters) or *grouped* (rows cut into equal runs of one adapter, a batched matmul per run: best
for many adapters, such as a CEM population).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .layer import SVFLayer
from .low_rank import LoraFactors, truncated_factors

# Rough cost of reading one factor entry from memory, in multiply-adds, for choosing a layout: decoding is
# bound by memory traffic, a matmul by arithmetic. Only the order of magnitude matters for the choice.
_READ_COST = 8


class RowForward(Protocol):
    """A layer's mixed-batch forward for one fixed list of row adapters."""

    rows: list[str]

    def __call__(self, layer: SVFLayer, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ExactRows:
    """The exact per-row path with the rows' changes ``s'_row - s`` computed once, (batch, r) float32."""

    rows: list[str]
    changes: torch.Tensor

    def __call__(self, layer: SVFLayer, x: torch.Tensor) -> torch.Tensor:
        return layer._forward_row_changes(x, self.changes)


@dataclass
class StackedLowRankRows:
    """``W x + B (mask_row * (A x))``: every adapter's components side by side (``A``: K x in, ``B``: out x K),
    ``mask`` (batch x K) keeping each row's own; one matmul pair serves all rows."""

    rows: list[str]
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    mask: torch.Tensor

    def __call__(self, layer: SVFLayer, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask.view(x.shape[0], *([1] * (x.dim() - 2)), -1)
        hidden = F.linear(x.to(self.lora_A.dtype), self.lora_A) * mask
        return layer._base_forward(x) + F.linear(hidden, self.lora_B).to(x.dtype)


@dataclass
class GroupedLowRankRows:
    """``W x + B_g (A_g x)`` by batched matmuls over ``groups`` equal runs of rows that share one adapter
    (``A``: groups x in x k, ``B``: groups x k x out; ranks padded with zero components to the largest)."""

    rows: list[str]
    lora_A: torch.Tensor
    lora_B: torch.Tensor

    def __call__(self, layer: SVFLayer, x: torch.Tensor) -> torch.Tensor:
        groups = self.lora_A.shape[0]
        hidden = torch.bmm(x.to(self.lora_A.dtype).reshape(groups, -1, x.shape[-1]), self.lora_A)
        delta = torch.bmm(hidden, self.lora_B).view(*x.shape[:-1], -1)
        return layer._base_forward(x) + delta.to(x.dtype)


class RowPlans:
    """What an SVF layer holds inside :func:`per_row_adapters`: the forward for the rows it last saw.

    Built on the first forward with a given list of row adapters (the prefill of a ``generate``, whose decode
    steps then reuse it; beams and returned sequences are already expanded by then).
    """

    def __init__(self, rank: int | float | None) -> None:
        self.rank = rank
        self._last: RowForward | None = None

    def forward(self, layer: SVFLayer, x: torch.Tensor, rows: list[str]) -> torch.Tensor:
        plan = self._last
        if plan is None or (plan.rows is not rows and plan.rows != rows):
            plan = self._last = build_row_forward(layer, list(rows), self.rank)
        return plan(layer, x)


def build_row_forward(layer: SVFLayer, rows: list[str], rank: int | float | None) -> RowForward:
    """The forward of ``layer`` for these row adapters: exact (``rank=None``) or each row's best low-rank
    change (an int rank, or a float share of the change's energy as in PEFT's ``convert_to_lora``)."""
    if rank is None:
        return ExactRows(rows, layer._row_changes(rows))
    factors = {
        name: truncated_factors(layer.svf_U, layer.singular_value_change([name]), layer.svf_Vh, rank)
        for name in dict.fromkeys(rows)
        if name in layer.svf_vector
    }
    run = math.gcd(*(len(list(run)) for _, run in groupby(rows)))
    groups = len(rows) // run
    stacked = sum(f.rank for f in factors.values())
    widest = max((f.rank for f in factors.values()), default=0)
    # Multiply-adds per decode step (per row and unit of m + n) plus the factor entries read, weighted.
    if (len(rows) + _READ_COST) * stacked <= (len(rows) + _READ_COST * groups) * widest:
        return _stacked(layer, rows, factors)
    return _grouped(layer, rows[::run], factors, rows)


def _stacked(layer: SVFLayer, rows: list[str], factors: dict[str, LoraFactors]) -> StackedLowRankRows:
    dtype, device = layer.svf_U.dtype, layer.svf_U.device
    starts, total = {}, 0
    for name, f in factors.items():
        starts[name], total = total, total + f.rank
    mask = torch.zeros(len(rows), total, dtype=dtype, device=device)
    for i, name in enumerate(rows):
        if name in factors:
            mask[i, starts[name] : starts[name] + factors[name].rank] = 1
    # No row's adapter touching this layer leaves a zero-width change: the base output alone.
    lora_A = torch.cat([f.lora_A for f in factors.values()]) if factors else layer.svf_Vh[:0]
    lora_B = torch.cat([f.lora_B for f in factors.values()], dim=1) if factors else layer.svf_U[:, :0]
    return StackedLowRankRows(rows, lora_A, lora_B, mask)


def _grouped(
    layer: SVFLayer, group_names: list[str], factors: dict[str, LoraFactors], rows: list[str]
) -> GroupedLowRankRows:
    dtype, device = layer.svf_U.dtype, layer.svf_U.device
    width = max(f.rank for f in factors.values())
    lora_A = torch.zeros(len(group_names), layer.in_features, width, dtype=dtype, device=device)
    lora_B = torch.zeros(len(group_names), width, layer.out_features, dtype=dtype, device=device)
    for g, name in enumerate(group_names):
        if name in factors:
            k = factors[name].rank
            lora_A[g, :, :k] = factors[name].lora_A.T
            lora_B[g, :k] = factors[name].lora_B.T
    return GroupedLowRankRows(rows, lora_A, lora_B)


@contextmanager
def per_row_adapters(model: nn.Module, rank: int | float | None = None) -> Iterator[None]:
    """Inside the block, ``model``'s SVF layers serve ``adapter_names`` rows from plans built once per list of
    rows: exact (``rank=None``) or each row's best rank-``rank`` change (int), or the fewest components keeping
    a ``rank`` share of its energy (float in (0, 1]). The layers hold nothing after the block."""
    layers = [module for module in model.modules() if isinstance(module, SVFLayer)]
    previous = [layer.row_plans for layer in layers]
    try:
        for layer in layers:
            layer.row_plans = RowPlans(rank)
        yield
    finally:
        for layer, plans in zip(layers, previous, strict=True):
            layer.row_plans = plans
