"""Generation with per-row adapters, leaving the user's model exactly as it was found.

A pass-2 batch whose rows all use one adapter runs at base-model speed: the adapter's change is added to
the dense weights for the call (the original weight tensors are kept and put back, so nothing is rounded
by a merge/unmerge round trip). Rows with different adapters go through one mixed-batch ``generate``
(``adapter_names``), the SVF layers' factored path with per-row singular values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers.pytorch_utils import Conv1D

from .mixing import BASE, svf_layers


@contextmanager
def preserved_state(model: PeftModel) -> Iterator[None]:
    """Whatever happens inside, ``model`` leaves with its active adapter, enabled/disabled adapters,
    per-module training flags and per-parameter ``requires_grad`` as they were, and in eval mode inside."""
    active = model.base_model.active_adapter
    layers = list(svf_layers(model).values())
    disabled = [layer.disable_adapters for layer in layers]
    training = {module: module.training for module in model.modules()}
    grads = {param: param.requires_grad for param in model.parameters()}
    if any(layer.merged for layer in layers):
        raise ValueError(
            "the model has merged adapters; call unmerge_adapter() before self-adaptive generation"
        )
    model.eval()
    try:
        yield
    finally:
        if model.base_model.active_adapter != active:
            model.base_model.set_adapter(active)
        for layer, was_disabled in zip(layers, disabled, strict=True):
            if layer.disable_adapters != was_disabled:
                layer.enable_adapters(not was_disabled)
        for module, flag in training.items():
            module.training = flag
        for param, flag in grads.items():
            param.requires_grad_(flag)


def _mergeable(model: PeftModel, name: str) -> bool:
    """Whether the dense weights can carry ``name`` for a call: plain dense bases, nothing tied or freed."""
    layers = [layer for layer in svf_layers(model).values() if name in layer.svf_vector]
    if not layers:
        return False
    uses = Counter(id(param) for _, param in model.named_parameters(remove_duplicate=False))
    for layer in layers:
        base = layer.get_base_layer()
        if layer.frees_base_weight or type(base) not in (nn.Linear, Conv1D) or uses[id(base.weight)] > 1:
            return False
    return True


@contextmanager
def weights_carrying(model: PeftModel, name: str) -> Iterator[None]:
    """Adapter ``name`` added into the dense weights inside the block; the original tensors come back after."""
    originals = []
    try:
        with torch.no_grad():
            for layer in svf_layers(model).values():
                if name not in layer.svf_vector:
                    continue
                base = layer.get_base_layer()
                originals.append((base.weight, base.weight.data))
                weight = layer.dense_weight().detach()
                layer.write_dense_weight(weight + layer.get_delta_weight(name).to(weight.dtype))
        with model.disable_adapter():
            yield
    finally:
        for param, data in originals:
            param.data = data


@contextmanager
def single_adapter(model: PeftModel, name: str, merge: bool) -> Iterator[None]:
    """Every row with adapter ``name`` (``"__base__"``: none); ``merge`` uses the dense-weight fast path."""
    with preserved_state(model):
        if name == BASE:
            with model.disable_adapter():
                yield
        elif merge and _mergeable(model, name):
            with weights_carrying(model, name):
                yield
        else:
            model.base_model.set_adapter(name)
            yield


def _expansion(model: PeftModel, gen_kwargs: dict[str, Any]) -> int:
    """Rows ``generate`` makes of each input row before the forward passes see them (beams are the hook's)."""
    config = model.generation_config
    beams = gen_kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1
    if beams > 1:
        return 1  # SVFModel's hook repeats adapter names per beam itself
    return gen_kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", 1) or 1


def routed_generate(
    model: PeftModel,
    rows: Sequence[str],
    *,
    merge: bool = True,
    **generate_kwargs: Any,
) -> Any:
    """``model.generate(**generate_kwargs)`` with row ``i`` under adapter ``rows[i]``, in one call."""
    if len(set(rows)) == 1:
        with single_adapter(model, rows[0], merge):
            return model.generate(**generate_kwargs)
    repeat = _expansion(model, generate_kwargs)
    names = [name for name in rows for _ in range(repeat)]
    with preserved_state(model):
        return model.generate(**generate_kwargs, adapter_names=names)


def greedy_texts(
    model: PeftModel,
    tokenizer: Any,
    texts: Sequence[str],
    rows: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int | None = None,
    merge: bool = False,
) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    """Greedy completions of rendered ``texts`` (row ``i`` under adapter ``rows[i]``), in input order.

    Returns the decoded completions, each row's prompt ids and each row's generated ids (up to and
    including the first end-of-sequence token), so callers can score exactly what was generated.
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id} | ({eos} if isinstance(eos, int) else set(eos or []))
    size = batch_size or len(texts)
    completions, prompts, generated = [], [], []
    for start in range(0, len(texts), size):
        chunk = list(texts[start : start + size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False).to(device)  # fmt: skip
        with torch.inference_mode():
            out = routed_generate(
                model, rows[start : start + size], merge=merge, **enc, max_new_tokens=max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        width = enc["input_ids"].shape[1]
        for i, sequence in enumerate(out):
            new = sequence[width:]
            stops = [j for j, token in enumerate(new.tolist()) if token in eos_ids]
            new = new[: stops[0] + 1] if stops else new
            prompts.append(enc["input_ids"][i][enc["attention_mask"][i].bool()])
            generated.append(new)
            completions.append(tokenizer.decode(new, skip_special_tokens=True))
    return completions, prompts, generated
