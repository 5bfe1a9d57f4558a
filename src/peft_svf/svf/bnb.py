"""SVF on bitsandbytes-quantised bases: decompose the dequantised weight, keep the base quantised.

The adapted output is the quantised base's own output plus ``U ((s' - s) * (V^T x))``, so an identity
adapter reproduces the quantised model exactly. Merging dequantises, adds the change and quantises again
(as PEFT's LoRA does), which rounds: prefer unmerged inference on quantised bases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.import_utils import is_bnb_4bit_available, is_bnb_available
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.integrations import dequantize_bnb_weight
from torch import nn

from .config import SVFConfig
from .layer import Linear


class _QuantizedSVFLayer(Linear):
    """Shared by the bitsandbytes layers: they differ only in how the weight is (de)quantised."""

    def _compute_dtype(self) -> torch.dtype:
        dtype = getattr(self.get_base_layer(), "compute_dtype", None)
        return dtype if dtype is not None and dtype.is_floating_point else torch.float32

    def _forward_with_dense_change(self, x: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        delta = self._compose(change)
        return self.get_base_layer()(x) + F.linear(x.to(delta.dtype), delta).to(x.dtype)


if is_bnb_available():
    import bitsandbytes as bnb

    class Linear8bitLt(_QuantizedSVFLayer):
        """SVF on ``bnb.nn.Linear8bitLt``."""

        def dense_weight(self) -> torch.Tensor:
            base = self.get_base_layer()
            return dequantize_bnb_weight(base.weight, state=base.state).float()

        def write_dense_weight(self, matrix: torch.Tensor) -> None:
            base = self.get_base_layer()
            weight = base.weight
            base.weight = bnb.nn.Int8Params(
                matrix.to("cpu"), requires_grad=False, has_fp16_weights=weight.has_fp16_weights
            ).to(weight.device)
            base.state.reset_grads()


if is_bnb_4bit_available():
    import bitsandbytes as bnb

    try:  # versions that repack 4-bit weights for AVX512-BF16 CPUs (packing_format_for_cpu) have it
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # older versions never repack
        _convert_weight_packed_for_cpu_inverse = None

    def _unpacked_for_cpu(base: nn.Module) -> nn.Module:
        """``base`` with its weight in the standard 4-bit layout, and told to keep it.

        On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight at its first no-grad eval forward;
        dequantising the repacked weight gives wrong values (the SVD would be of another matrix), and
        backward through it gives no input gradient. SVF needs both, so the repacking is undone and off.
        """
        base.support_avx512bf16_for_cpu = False
        weight = base.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                weight.data, weight.quant_state
            )
        return base

    class Linear4bit(_QuantizedSVFLayer):
        """SVF on ``bnb.nn.Linear4bit``."""

        def dense_weight(self) -> torch.Tensor:
            return dequantize_bnb_weight(_unpacked_for_cpu(self.get_base_layer()).weight).float()

        def write_dense_weight(self, matrix: torch.Tensor) -> None:
            base = self.get_base_layer()
            weight = base.weight
            kwargs = {k: v for k, v in weight.__dict__.items() if not k.startswith("_") and k != "data"}
            kwargs["requires_grad"] = False
            if "bnb_quantized" in kwargs:
                kwargs["bnb_quantized"] = False
            base.weight = bnb.nn.Params4bit(matrix.to("cpu"), **kwargs).to(weight.device)


def dispatch_bnb(target: nn.Module, adapter_name: str, config: SVFConfig) -> nn.Module | None:
    """The SVF layer for a bitsandbytes module, or None when ``target`` is not one."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if is_bnb_available() and isinstance(base, bnb.nn.Linear8bitLt):
        return Linear8bitLt(target, adapter_name, config)
    if is_bnb_4bit_available() and isinstance(base, bnb.nn.Linear4bit):
        return Linear4bit(target, adapter_name, config)
    return None
