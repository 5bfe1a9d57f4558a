"""An adapter merged into the dense weights for one block, and the original weight tensors put back after.

PEFT's ``merge_adapter``/``unmerge_adapter`` round trip computes ``W + Δ - Δ``, which is not ``W`` in floating
point; repeated every rollout while the adapter changes, the error accumulates (a bf16 layer was 2.6% off
after 1,000 trainer updates). :func:`merged_for_inference` merges through each layer's own ``merge``
(``safe_merge=True``, which writes the merged weight as a new tensor and never touches the original), keeps
a reference to the original tensor and puts that reference back on exit: nothing is rounded and nothing is
cloned. It serves the trainer's rollouts, pass 2's single-adapter batches and CEM's evaluation of a
mixture. Works for any additive PEFT layer (SVF, LoRA) on a plain dense base; anything else runs unmerged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from .layer import SVFLayer, path_costs


def _layers_holding(model: PeftModel, adapter_name: str) -> list[BaseTunerLayer]:
    return [
        module
        for module in model.modules()
        if isinstance(module, BaseTunerLayer)
        and any(adapter_name in getattr(module, attr) for attr in module.adapter_layer_names)
    ]


def parameter_uses(model: nn.Module) -> Counter[int]:
    """How many module attributes hold each parameter (by ``id``): above 1 means tied, e.g. an output head
    sharing the input embeddings."""
    return Counter(id(param) for _, param in model.named_parameters(remove_duplicate=False))


def mergeable(model: PeftModel, adapter_name: str) -> bool:
    """Whether ``adapter_name`` can be merged and taken out again exactly.

    Only into plain dense weights (a quantised weight re-quantises, which rounds), used by one module only
    (merging a tied weight would change the other user, e.g. an output head tied to the embeddings) and
    changed by the merge alone (LoRA's ``lora_bias`` adds into the bias in place). A weight freed by
    ``keep_base_weight=False`` is fine: the merge composes ``W'`` from the factors and the empty tensor
    comes back.
    """
    layers = _layers_holding(model, adapter_name)
    if not layers:
        return False
    uses = parameter_uses(model)
    for layer in layers:
        base = layer.get_base_layer()
        if (
            type(base) not in (nn.Linear, Conv1D)
            or getattr(layer, "quantization_backend", None) is not None
            or getattr(layer, "lora_bias", {}).get(adapter_name, False)
            or uses[id(base.weight)] > 1
        ):
            return False
    return True


def worth_merging(model: PeftModel, adapter_name: str, tokens: int) -> bool:
    """Whether merging once costs less than the adapter's factored change on ``tokens`` tokens.

    The layers' own recompose/factored rule (:func:`~peft_svf.svf.layer.path_costs`, no gradients),
    summed over the SVF layers holding the adapter: a whole ``generate`` instead of one forward.
    """
    recompose = factored = 0
    for layer in _layers_holding(model, adapter_name):
        if isinstance(layer, SVFLayer):
            m, n, r = layer.out_features, layer.in_features, layer.rank
            costs = path_costs(tokens, m, n, r, False, layer.factored_replaces_base)
            recompose, factored = recompose + costs[0], factored + costs[1]
    return recompose < factored


@contextmanager
def merged_for_inference(
    model: PeftModel, adapter_name: str | None = None, tokens: int | None = None
) -> Iterator[bool]:
    """``adapter_name`` (default: the active adapter) merged into the weights inside the block.

    Yields whether it merged. It does not when :func:`mergeable` says it cannot be undone exactly, or when
    ``tokens`` (those the block will run) are too few to repay building the weights (:func:`worth_merging`);
    the block then runs the adapter unmerged, exactly as the model stands. On exit, also after an error,
    every merged layer has its original weight tensor (the same object) and is unmerged again.
    """
    name = adapter_name or model.active_adapter
    layers = _layers_holding(model, name)
    if any(layer.merged for layer in layers):
        raise ValueError(f"adapter {name!r} is merged already; call unmerge_adapter() first")
    if not mergeable(model, name) or (tokens is not None and not worth_merging(model, name, tokens)):
        yield False
        return
    originals: list[tuple[BaseTunerLayer, nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                originals.append((layer, weight, weight.data))
                layer.merge(safe_merge=True, adapter_names=[name])
        yield True
    finally:
        for layer, weight, data in originals:
            weight.data = data
            layer.merged_adapters.clear()
