"""Generation with per-row adapters, leaving the user's model exactly as it was found.

A pass-2 batch whose rows all use one adapter runs at base-model speed: the adapter is merged into the
dense weights for the call by :func:`~peft_svf.svf.merging.merged_for_inference` (the original weight
tensors are kept and put back, so nothing is rounded by a merge/unmerge round trip). Rows with different adapters go through one mixed-batch ``generate``
(``adapter_names``), the SVF layers' factored path with per-row singular values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from peft import PeftModel
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from ..prefix import (
    generate_sharing_prefix,
    positions_from_mask,
    prefix_cache,
    prefix_layout,
    shared_prefix_length,
)
from ..stopping import RowsDone
from ..svf.merging import merged_for_inference
from ..svf.mixed_batch import per_row_adapters
from ..tokens import ensure_pad_token, eos_token_ids
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


Merge = bool | str  # True, False or "auto"


@contextmanager
def single_adapter(model: PeftModel, name: str, merge: Merge, tokens: int = 0) -> Iterator[None]:
    """Every row with adapter ``name`` (``"__base__"``: none). ``merge`` adds the adapter into the dense
    weights for the block (base-model speed per token, :func:`~peft_svf.svf.merging.merged_for_inference`);
    ``"auto"`` does so when ``tokens`` make it pay."""
    with preserved_state(model):
        if name == BASE:
            with model.disable_adapter():
                yield
            return
        model.base_model.set_adapter(name)
        if not merge:
            yield
            return
        with merged_for_inference(model, name, tokens=tokens if merge == "auto" else None):
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
    merge: Merge = "auto",
    per_row_rank: int | float | None = None,
    share_prefix: bool = True,
    **generate_kwargs: Any,
) -> Any:
    """``model.generate(**generate_kwargs)`` with row ``i`` under adapter ``rows[i]``, in one call.

    ``share_prefix``: when every row has the same adapter, the tokens all prompts start with run once
    (:func:`~peft_svf.prefix.generate_sharing_prefix`: chat templates repeat their system text in every row).

    Rows with different adapters use each row's exact change (``per_row_rank=None``), or its best low-rank
    form: an int keeps that many components per layer, a float the fewest that keep that share of the
    change's energy (``peft.tuners.lora.conversion.convert_to_lora``'s ``rank``); see
    :mod:`peft_svf.svf.mixed_batch`.
    """
    if len(set(rows)) == 1:
        new = generate_kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens or 0
        tokens = generate_kwargs["input_ids"].numel() + len(rows) * _expansion(model, generate_kwargs) * new
        with single_adapter(model, rows[0], merge, tokens):
            if share_prefix:
                return generate_sharing_prefix(model, **generate_kwargs)
            return model.generate(**generate_kwargs)
    repeat = _expansion(model, generate_kwargs)
    names = [name for name in rows for _ in range(repeat)]
    with preserved_state(model), per_row_adapters(model, per_row_rank):
        return model.generate(**generate_kwargs, adapter_names=names)


class _ChosenTokenLogProbs(LogitsProcessor):
    """Records, at each decoding step, the log-probability of the token greedy decoding picks (the top score):
    the log-likelihood of a greedy completion without a second forward over prompt and completion."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(scores.max(-1).values - scores.logsumexp(-1))
        return scores


class GreedyTexts(NamedTuple):
    """What :func:`greedy_texts` returns, one entry per row in input order."""

    completions: list[str]
    generated: list[torch.Tensor]  # token ids, up to and including the first end-of-sequence token
    log_likelihoods: list[float] | None  # sum of the generated tokens' log-probabilities, when asked for


def greedy_texts(
    model: PeftModel,
    tokenizer: Any,
    texts: Sequence[str],
    rows: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int | None = None,
    merge: Merge = "auto",
    per_row_rank: int | float | None = None,
    share_prefix: bool = True,
    stop_when: Callable[[str], bool] | None = None,
    log_likelihoods: bool = False,
) -> GreedyTexts:
    """Greedy completions of rendered ``texts`` (row ``i`` under adapter ``rows[i]``), in input order.

    ``share_prefix``: when a chunk's rows share one adapter, the tokens they all start with (pass 1's
    long classification instructions) are run once and their KV cache reused by every row
    (:func:`routed_generate`). ``stop_when(text)`` ends a row early. ``per_row_rank``: see :func:`routed_generate`.
    ``log_likelihoods``: also each completion's log-likelihood under the distribution it was decoded from,
    taken from the decoding steps' scores (CEM's tie-break; a scoring forward afterwards would cost as much
    as the prompts' prefill again, and its logits memory).
    """
    pad = ensure_pad_token(tokenizer)
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(tokenizer, model.generation_config)
    token_rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    size = batch_size or len(texts)
    greedy = {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
              "top_k": None, "pad_token_id": pad}  # fmt: skip
    completions, generated, sums = [], [], []
    for start in range(0, len(texts), size):
        chunk, chunk_rows = token_rows[start : start + size], list(rows[start : start + size])
        ids, mask = prefix_layout(chunk, 0, pad, device)
        width = ids.shape[1]
        stopper = RowsDone(tokenizer, width, stop_when) if stop_when is not None else None
        if stopper is not None:
            greedy["stopping_criteria"] = StoppingCriteriaList([stopper])
        recorder = _ChosenTokenLogProbs() if log_likelihoods else None
        if recorder is not None:
            greedy["logits_processor"] = LogitsProcessorList([recorder])
        with torch.inference_mode():
            out = routed_generate(model, chunk_rows, merge=merge, per_row_rank=per_row_rank, share_prefix=share_prefix,
                                  input_ids=ids, attention_mask=mask, **greedy)  # fmt: skip
        # (rows, decoding steps); None when nothing was asked for or no step ran (then every row is empty)
        steps = torch.stack(recorder.steps, 1) if recorder is not None and recorder.steps else None
        kept = out.size(1) - width
        ends = stopper.ends(len(out), kept) if stopper is not None else [kept] * len(out)
        for i, sequence in enumerate(out):
            new = sequence[width:]
            stops = [j for j, token in enumerate(new.tolist()) if token in eos_ids]
            new = new[: stops[0] + 1] if stops else new
            new = new[: ends[i]]  # a stopped row is padded after its stop, and the pad may be EOS
            generated.append(new)
            completions.append(tokenizer.decode(new, skip_special_tokens=True))
            if recorder is not None:  # step j scored token j of every row
                sums.append(steps[i, : len(new)].sum().item() if len(new) else 0.0)
    return GreedyTexts(completions, generated, sums if log_likelihoods else None)


@torch.inference_mode()
def last_token_logits(
    model: PeftModel, token_rows: Sequence[Sequence[int]], pad: int, batch_size: int | None = None
) -> torch.Tensor:
    """Next-token logits after each row (float32), sharing the rows' common prefix as ``greedy_texts`` does.

    Rows are laid out as ``generate`` lays them out (shared prefix, then left-padded suffixes), so only
    the last position goes through the output head. Call it inside the adapter context the rows should
    see (e.g. :func:`single_adapter`).
    """
    device = next(model.parameters()).device
    size = batch_size or len(token_rows)
    result = []
    for start in range(0, len(token_rows), size):
        chunk = token_rows[start : start + size]
        shared = shared_prefix_length(chunk)
        ids, mask = prefix_layout(chunk, shared, pad, device)
        kwargs: dict[str, Any] = {}
        if shared:
            kwargs["cache"] = prefix_cache(model, ids[0, :shared], len(chunk))
        positions = positions_from_mask(mask)[:, shared:]
        out = model(
            input_ids=ids[:, shared:], attention_mask=mask, position_ids=positions, logits_to_keep=1, **kwargs
        )
        result.append(out.logits[:, -1].float())
    return torch.cat(result)
