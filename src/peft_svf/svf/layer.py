"""SVF's tuner layer ``Linear``: ``torch.nn.Linear``, GPT-2's ``Conv1D`` and quantised linear bases.

A layer holds one decomposition ``W = U diag(s) V^T`` of its base weight, shared by all its adapters, and
one vector per adapter. Adapter ``k`` turns ``s`` into ``s * g_k`` (see ``SVFConfig``); several active
adapters add their changes, ``s' = s + sum_k s * (g_k - 1)``, like stacked LoRA deltas, so merging them
one after another gives the same weight as using them together.

The adapted output is computed as ``W x + U ((s' - s) * (V^T x))``. Keeping the change separate from ``W``
makes a fresh adapter reproduce the base exactly, and lets the same code serve quantised bases: as in
PEFT's VeRA and OFT, a quantised base (bitsandbytes, HQQ, torchao) gets PEFT's ``quantization_backend``,
which dequantises its weight for the decomposition and quantises it again on merge (which rounds: prefer
unmerged inference on quantised bases).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from peft.utils import quantization_extra_repr, resolve_quantization_backend
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import SVFConfig
from .decomposition import decompose

# The adapter name that stands for no adapter at all: a mixed batch's base rows, a mixture's identity share.
BASE = "__base__"


def initial_vector(config: SVFConfig, rank: int) -> torch.Tensor:
    """Starting vector: the identity of the chosen parameterisation plus optional noise (float32).

    ``init_weights=False`` adds standard normal noise instead, so the adapter is not the identity.
    """
    start = config.init_value if config.parameterization == "official" else 1.0
    vector = torch.full((rank,), float(start), dtype=torch.float32)
    noise_std = config.init_noise_std if config.init_weights else 1.0
    if noise_std > 0:
        vector += noise_std * torch.randn(rank)
    return vector


def all_finite(tensor: torch.Tensor) -> bool:
    """``torch.isfinite(tensor).all()`` in one pass: merging for every rollout checks 210 weights, and the
    element-wise test took a quarter of the merge on SmolLM2 (0.16 of 0.69 s).

    A float64 sum of values of at most 32 bits can neither overflow nor lose an inf or a nan (``inf - inf``
    is nan), so it is finite exactly when every value is; wider dtypes take the element-wise test.
    """
    if tensor.is_floating_point() and tensor.element_size() <= 4:
        return bool(torch.isfinite(tensor.sum(dtype=torch.float64)))
    return bool(torch.isfinite(tensor).all())


def official_mask(vector: torch.Tensor, max_mult: float) -> torch.Tensor:
    """The authors' bounded mask ``sigmoid(p) * max_mult`` (float64)."""
    return torch.sigmoid(vector.double()) * max_mult


def mass_preserving_gain(mask: torch.Tensor, singular_values: torch.Tensor) -> torch.Tensor:
    """``mask`` renormalised so that the total singular-value mass is unchanged (float64).

    In float64 so that a uniform mask gives exactly 1 after rounding back: a fresh adapter then changes
    nothing (in float32 the sums' rounding alone moved SmolLM2's logits by ~1e-4).
    """
    s = singular_values.double()
    return mask * (s.sum() / (s * mask).sum())


def singular_value_gain(
    vector: torch.Tensor, singular_values: torch.Tensor, parameterization: str, max_mult: float
) -> torch.Tensor:
    """Per-component factor ``g`` with ``s' = s * g`` (float32)."""
    vector = vector.float()
    if parameterization == "scale":
        return vector
    return mass_preserving_gain(official_mask(vector, max_mult), singular_values).float()


def path_costs(
    tokens: int,
    out_features: int,
    in_features: int,
    rank: int,
    needs_grad: bool,
    factored_replaces_base: bool,
) -> tuple[int, int]:
    """(recompose, factored): the work each path adds beyond the frozen base, in multiply-adds.

    With ``T`` tokens, an ``m x n`` weight and rank ``r``:
      recompose: ``m n r`` to build the weight (with gradients, ``m n r`` more plus ``T m n`` for them);
      factored: ``T r (m + n)`` (doubled with gradients), minus the base matmul ``T m n`` (doubled with
      gradients) when the factored path replaces it, as it does for dense bases.
    Merging an adapter for a whole ``generate`` is recompose once against factored on all its tokens.
    """
    m, n, r, t = out_features, in_features, rank, tokens
    passes = 2 if needs_grad else 1
    recompose = passes * m * n * r + (t * m * n if needs_grad else 0)
    factored = passes * t * r * (m + n) - (passes * t * m * n if factored_replaces_base else 0)
    return recompose, factored


def _keep_standard_4bit_layout(base: nn.Module) -> None:
    """Undo and switch off bitsandbytes' CPU repacking of a 4-bit weight (a no-op for any other layer).

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight at its first no-grad eval forward;
    dequantising the repacked weight gives wrong values (the SVD would be of another matrix), and
    backward through it gives no input gradient. SVF needs both, so the repacking is undone and off.
    """
    if not getattr(base, "support_avx512bf16_for_cpu", False):
        return
    base.support_avx512bf16_for_cpu = False
    weight = base.weight
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            weight.data, weight.quant_state
        )


class SVFLayer(BaseTunerLayer):
    """The SVF state and maths; the base weight is read and written through PEFT's quantisation backend."""

    adapter_layer_names = ("svf_vector",)
    other_param_names = ("svf_parameterization", "svf_max_mult", "svf_forward_mode")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.quantization_backend = resolve_quantization_backend(
            self.get_base_layer(), get_apply_tensor_subclass=kwargs.get("get_apply_tensor_subclass")
        )
        _keep_standard_4bit_layout(self.get_base_layer())
        self.svf_vector = nn.ParameterDict({})
        self.svf_parameterization: dict[str, str] = {}
        self.svf_max_mult: dict[str, float] = {}
        self.svf_forward_mode: dict[str, str] = {}
        self.frees_base_weight = False
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        self.row_plans = None  # per-row forwards for mixed batches, set by mixed_batch.per_row_adapters
        self.in_features, self.out_features = _get_in_out_features(self.get_base_layer())
        self.rank = min(self.in_features, self.out_features)

    # -- base weight access -----------------------------------------------------------------------------
    def dense_weight(self) -> torch.Tensor:
        """The base weight as an (out_features, in_features) matrix (dequantised to float32 if quantised)."""
        if self.quantization_backend is not None:
            return self.get_base_weight().float()
        base = self.get_base_layer()
        return base.weight.T if isinstance(base, Conv1D) else base.weight

    def write_dense_weight(self, matrix: torch.Tensor) -> None:
        """Store an (out_features, in_features) matrix as the base weight (shape may change if W was freed)."""
        if self.quantization_backend is not None:
            self.set_base_weight(matrix.contiguous())
            return
        base = self.get_base_layer()
        data = matrix.T if isinstance(base, Conv1D) else matrix
        base.weight.data = data.contiguous().to(base.weight.dtype)

    def _compute_dtype(self) -> torch.dtype:
        """The dtype the base computes in: a quantised weight's storage dtype (int8, uint8) is not one."""
        base = self.get_base_layer()
        candidates = (
            getattr(base, "compute_dtype", None),
            getattr(getattr(base, "weight", None), "dtype", None),
        )
        floats = [d for d in candidates if isinstance(d, torch.dtype) and d.is_floating_point]
        return floats[0] if floats else torch.float32

    # -- adapters ---------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: SVFConfig, **kwargs: Any) -> None:
        if not hasattr(self, "svf_S"):
            self._decompose(config)
        if config.parameterization == "official" and self.rank == 1:
            warnings.warn(
                f"SVF adapter {adapter_name!r} on a rank-1 weight ({self.out_features} x {self.in_features}): the "
                "official mask keeps the singular-value mass, so it cannot change this layer; use 'scale'."
            )
        self.set_vector(
            adapter_name, initial_vector(config, self.rank), config.parameterization, config.max_mult
        )
        self.svf_forward_mode[adapter_name] = config.forward_mode
        # PEFT's convention: the base layer's device and float dtype; PeftModel then upcasts float16/bfloat16
        # to float32 unless autocast_adapter_dtype=False. The gain is computed in float32 either way.
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def set_vector(
        self,
        adapter_name: str,
        vector: torch.Tensor,
        parameterization: str,
        max_mult: float,
        requires_grad: bool = True,
    ) -> None:
        """Hold ``vector`` as adapter ``adapter_name`` of this layer (on the factors' device)."""
        self.svf_vector[adapter_name] = nn.Parameter(
            vector.to(self.svf_S.device), requires_grad=requires_grad
        )
        self.svf_parameterization[adapter_name] = parameterization
        self.svf_max_mult[adapter_name] = max_mult

    def weighted_mixture(
        self, weights: dict[str, float], parameterization: str, max_mult: float, identity: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(vector, exact float64 gain) of the ``weights`` mixture of this layer's adapters (paper 3.2 C).

        ``BASE`` is the identity vector (``identity``: official ``init_value``, scale 1). ``"scale"`` mixes
        literally, ``z' = sum_k w_k z_k``. ``"official"`` mixes as the authors do, in mask space:
        ``m' = sum_k w_k sigmoid(p_k) max_mult_k / sum_k w_k``, renormalised like every official gain (which
        makes the division by ``sum_k w_k`` free), stored as ``p' = logit(m' / max_mult)``; one expert alone
        at any weight is that expert, copied bit for bit. All-zero weights give the identity.
        """
        nonzero = {name: weight for name, weight in weights.items() if weight != 0.0}
        missing = [name for name in nonzero if name != BASE and name not in self.svf_vector]
        if missing:
            raise ValueError(f"experts {missing} do not adapt every layer the others adapt; cannot mix them")

        def vector_of(name: str) -> torch.Tensor:
            if name == BASE:
                return torch.full_like(self.svf_S, identity, dtype=torch.float64)
            return self.svf_vector[name].detach().double()

        if parameterization == "scale":
            if sum(weights.values()) == 0.0:
                mixed = torch.ones_like(self.svf_S, dtype=torch.float64)
            else:
                mixed = sum(weight * vector_of(name) for name, weight in nonzero.items())
            return mixed.float(), mixed
        if any(weight < 0 for weight in nonzero.values()):
            raise ValueError(f"official mixtures need non-negative weights, got {weights}")
        if not nonzero:
            return torch.full_like(self.svf_S, identity), torch.ones_like(self.svf_S, dtype=torch.float64)
        (first, _), total = next(iter(nonzero.items())), sum(nonzero.values())
        if len(nonzero) == 1 and first != BASE and self.svf_max_mult[first] == max_mult:
            vector = self.svf_vector[first].detach().float().clone()
            return vector, mass_preserving_gain(official_mask(vector, max_mult), self.svf_S)
        mask = sum(
            (weight / total) * official_mask(vector_of(name), self.svf_max_mult.get(name, max_mult))
            for name, weight in nonzero.items()
        )
        ratio = mask / max_mult
        return torch.log(ratio / (1 - ratio)).float(), mass_preserving_gain(mask, self.svf_S)

    def _decompose(self, config: SVFConfig) -> None:
        """Decompose once per layer; later adapters reuse the factors (an expert adds only its vector)."""
        matrix = self.dense_weight().detach()
        factors = decompose(matrix, config.svd_dtype, config.svd_cache_dir, config.svd_cache)
        factors_dtype = (
            getattr(torch, config.factors_dtype) if config.factors_dtype else self._compute_dtype()
        )
        # Non-persistent: the factors are derived from the base weight, never saved with the adapter.
        self.register_buffer("svf_U", factors.U.to(factors_dtype).contiguous(), persistent=False)
        self.register_buffer("svf_S", factors.S.float(), persistent=False)
        self.register_buffer("svf_Vh", factors.Vh.to(factors_dtype).contiguous(), persistent=False)
        if not config.keep_base_weight:
            self._free_base_weight()

    def _free_base_weight(self) -> None:
        base = self.get_base_layer()
        if self.quantization_backend is not None:
            warnings.warn(
                "keep_base_weight=False only applies to dense layers; keeping the quantised weight."
            )
            return
        base.weight.data = torch.empty(0, dtype=base.weight.dtype, device=base.weight.device)
        self.frees_base_weight = True

    def gain(self, adapter_name: str) -> torch.Tensor:
        return singular_value_gain(
            self.svf_vector[adapter_name],
            self.svf_S,
            self.svf_parameterization[adapter_name],
            self.svf_max_mult[adapter_name],
        )

    def singular_value_change(self, adapter_names: list[str]) -> torch.Tensor:
        """``s' - s`` for these adapters used together (float32)."""
        change = torch.zeros_like(self.svf_S)
        for name in adapter_names:
            change = change + self.svf_S * (self.gain(name) - 1.0)
        return change

    def adapted_singular_values(self, adapter_names: list[str]) -> torch.Tensor:
        return self.svf_S + self.singular_value_change(adapter_names)

    def _compose(self, singular_values: torch.Tensor) -> torch.Tensor:
        """``U diag(singular_values) V^T`` in the factors' dtype, (out_features, in_features)."""
        return (self.svf_U * singular_values.to(self.svf_U.dtype)) @ self.svf_Vh

    def delta_matrix(self, adapter_names: list[str]) -> torch.Tensor:
        """Dense change ``W' - W`` for these adapters together, (out_features, in_features) for every base."""
        return self._compose(self.singular_value_change(adapter_names))

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``W' - W`` for one adapter in the base weight's own layout (in x out for ``Conv1D``), PEFT's
        convention: ``convert_to_lora`` transposes its factors back for ``Conv1D``."""
        delta = self.delta_matrix([adapter_name])
        return delta.T if isinstance(self.get_base_layer(), Conv1D) else delta

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """SVF is additive, ``W' = W + get_delta_weight``, so PEFT's ``convert_to_lora`` applies."""
        return True

    # -- merging ----------------------------------------------------------------------------------------
    def _plus_delta(self, weight: torch.Tensor, adapter_name: str, alpha: float) -> torch.Tensor:
        """``weight + alpha (W' - W)`` for one adapter, as a new tensor. One fused ``addmm`` when the factors
        share the weight's dtype: no dense change the size of the weight first (every rollout merges all 210
        SmolLM2 weights: 0.60 -> 0.56 s, medians of 12 merges interleaved with the old way)."""
        change = self.singular_value_change([adapter_name])
        U, Vh = self.svf_U, self.svf_Vh
        if U.dtype != weight.dtype:
            return weight + alpha * self._compose(change).to(weight.dtype)
        return torch.addmm(weight, U * change.to(U.dtype), Vh, alpha=alpha)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.svf_vector]
        if self.frees_base_weight and not adapter_names and not self.merged:
            # keep_base_weight=False and no adapter to merge here: a merged model's weights are read as the
            # model's (TRL's vLLM sync pushes them), so rebuild W from its factors; unmerge() frees it again.
            self.write_dense_weight(self._compose(self.svf_S))
        for name in adapter_names:
            if self.frees_base_weight:  # no W to add to: compose the merged weight from the factors
                merged = self._compose(self.adapted_singular_values([*self.merged_adapters, name]))
            else:
                merged = self._plus_delta(self.dense_weight().detach(), name, 1.0)
            if safe_merge and not all_finite(merged):
                raise ValueError(
                    f"NaNs detected in the merged weights. The adapter {name!r} seems to be broken."
                )
            self.write_dense_weight(merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            if self.frees_base_weight:  # a W that merge() rebuilt with nothing to merge into it
                self._free_base_weight()
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if not self.frees_base_weight:
                self.write_dense_weight(self._plus_delta(self.dense_weight().detach(), name, -1.0))
        if self.frees_base_weight:
            self._free_base_weight()

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.Module:
        """Hand back the base module; a freed weight is rebuilt (merged, or from the plain factors)."""
        if merge:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        if self.frees_base_weight and not self.merged:
            self.write_dense_weight(self._compose(self.svf_S))
        return self.get_base_layer()

    # -- forward ----------------------------------------------------------------------------------------
    def _active_adapter_names(self) -> list[str]:
        return [name for name in self.active_adapters if name in self.svf_vector]

    @property
    def factored_replaces_base(self) -> bool:
        """Without ``W`` the factored path is ``U (s' * (V^T x))``; with it, ``W x`` plus the change."""
        return self.frees_base_weight

    def _forward_path(self, x: torch.Tensor, adapter_names: list[str]) -> str:
        """``"recompose"``, ``"factored"`` (``W x`` plus the change) or ``"from_factors"`` (``U (s' * (V^T x))``).

        The adapters' ``forward_mode`` when they agree on one; else (or for ``"auto"``) the cheaper path.
        When the vectors need gradients, a dense ``W``'s matmul may go as well: its input gradient and the
        vector's gradient then come from the thin factors, not from a recomposed weight whose gradient costs
        a full ``T x m x n`` product (MLP shapes of SmolLM2: 1.4x a frozen layer's work against 2x). The output
        is then the base's to float rounding, not bit for bit, which only inference promises.
        """
        modes = {self.svf_forward_mode.get(name, "auto") for name in adapter_names}
        if len(modes) == 1 and "auto" not in modes:
            return modes.pop()
        tokens = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and any(self.svf_vector[n].requires_grad for n in adapter_names)
        replaces_base = self.frees_base_weight or (needs_grad and self.quantization_backend is None)
        recompose, factored = path_costs(
            tokens, self.out_features, self.in_features, self.rank, needs_grad, replaces_base
        )
        if recompose < factored:
            return "recompose"
        return "from_factors" if replaces_base else "factored"

    def _factored(self, x: torch.Tensor, singular_values: torch.Tensor) -> torch.Tensor:
        """``U (singular_values * (V^T x))``: two thin matmuls, no dense weight."""
        dtype = self.svf_U.dtype
        hidden = F.linear(x.to(dtype), self.svf_Vh) * singular_values.to(dtype)
        return F.linear(hidden, self.svf_U)

    def _plus_bias(self, out: torch.Tensor) -> torch.Tensor:
        bias = self.get_base_layer().bias
        return out if bias is None else out + bias

    def _from_factors(self, x: torch.Tensor, singular_values: torch.Tensor) -> torch.Tensor:
        """The layer's whole output ``U (singular_values * (V^T x)) + b``, with no ``W x``."""
        return self._plus_bias(self._factored(x, singular_values))

    def _adapted_forward(self, x: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        change = self.singular_value_change(adapter_names)
        path = self._forward_path(x, adapter_names)
        if path == "recompose":
            return self._forward_with_dense_change(x, change)
        if path == "from_factors":
            return self._from_factors(x, self.svf_S + change)
        return self._forward_factored(x, change)

    def _forward_factored(self, x: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        if self.frees_base_weight:
            return self._from_factors(x, self.svf_S + change)
        # Keeping W x exact is what makes a fresh adapter reproduce the base bit for bit.
        return self.get_base_layer()(x) + self._factored(x, change).to(x.dtype)

    def _forward_with_dense_change(self, x: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """``(W + U diag(change) V^T) x``, the weight built in one fused ``addmm`` (or from factors if freed).

        A quantised ``W`` cannot be added to: there the dense change goes beside the base's own output.
        """
        if self.quantization_backend is not None:
            delta = self._compose(change)
            return self.get_base_layer()(x) + F.linear(x.to(delta.dtype), delta).to(x.dtype)
        if self.frees_base_weight:
            weight = self._compose(self.svf_S + change)
            return self._plus_bias(F.linear(x.to(weight.dtype), weight))
        weight = self.dense_weight()
        U, Vh = self.svf_U, self.svf_Vh
        if U.dtype != weight.dtype:
            U, Vh = U.to(weight.dtype), Vh.to(weight.dtype)
        return F.linear(x, torch.addmm(weight, U * change.to(U.dtype), Vh), self.get_base_layer().bias)

    def _base_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.merged or not self.frees_base_weight:
            return self.base_layer(x, *args, **kwargs)
        return self._from_factors(x, self.svf_S)

    def _mixed_batch_forward(self, x: torch.Tensor, row_adapters: list[str]) -> torch.Tensor:
        """Each batch row with its own adapter (or ``"__base__"``), in one pass: per-row singular values.

        Inside ``peft_svf.svf.mixed_batch.per_row_adapters`` the rows' changes are worked out once per list
        of rows (exactly, or each row's best low-rank change) instead of on every forward.
        """
        if len(row_adapters) != x.shape[0]:
            raise ValueError(f"Got {len(row_adapters)} adapter names for a batch of {x.shape[0]} rows.")
        if self.row_plans is not None:
            return self.row_plans.forward(self, x, row_adapters)
        return self._forward_row_changes(x, self._row_changes(row_adapters))

    def _row_changes(self, row_adapters: list[str]) -> torch.Tensor:
        """``s'_row - s`` of each row's adapter (zero for ``"__base__"``), (batch, r) float32."""
        changes = {
            name: self.singular_value_change([name])
            if name in self.svf_vector
            else torch.zeros_like(self.svf_S)
            for name in set(row_adapters)
        }
        return torch.stack([changes[name] for name in row_adapters])

    def _forward_row_changes(self, x: torch.Tensor, per_row: torch.Tensor) -> torch.Tensor:
        # Shaped to broadcast over the token dimensions, so the ordinary factored path serves every row.
        per_row = per_row.view(x.shape[0], *([1] * (x.dim() - 2)), -1)
        return self._forward_factored(x, per_row).to(x.dtype)

    def svf_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """The forward of every SVF layer class (``nn.Module`` comes first in their MRO, as in PEFT).

        ``adapter_names`` (one per batch row, ``"__base__"`` for none) is injected by
        ``SVFModel._enable_peft_forward_hooks`` when ``model(..., adapter_names=[...])`` is called.
        """
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self._base_forward(x, *args, **kwargs)
        if adapter_names is not None:
            if self.merged:
                raise ValueError("Cannot pass `adapter_names` while adapters are merged; unmerge them first.")
            return self._mixed_batch_forward(x, adapter_names)
        active = self._active_adapter_names()
        if self.merged or not active:
            return self._base_forward(x, *args, **kwargs)
        return self._adapted_forward(x, active).to(x.dtype)


class Linear(nn.Module, SVFLayer):
    """SVF on ``torch.nn.Linear``, transformers' ``Conv1D`` (weight stored transposed) or a quantised linear."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SVFConfig, **kwargs: Any) -> None:
        super().__init__()
        SVFLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    forward = SVFLayer.svf_forward

    def extra_repr(self) -> str:
        return quantization_extra_repr(self)
