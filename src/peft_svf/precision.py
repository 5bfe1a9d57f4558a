"""What mixed precision (``bf16=True``) needs to pay on a CPU: casts made once instead of at every call.

Autocast casts a frozen float32 weight to bfloat16 at every call: in a rollout that is every decoding step,
and on a CPU with bfloat16 matrix units the casts took longer than the matmuls they fed (SmolLM2, 16 prompts x
16 tokens: 1.55 s of copies beside 0.68 s of matmuls). ``frozen_weights_in`` casts the frozen weights once per
rollout, ``factors_in`` SVF's factors once per training; both put the original tensors back on exit, so nothing
is rounded for training. ``contiguous_head_input`` avoids a per-row copy of the output head's weight.
``inference_in`` puts the three together for inference outside the trainer (the main job's unseen tasks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


@contextmanager
def frozen_weights_in(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside the block, every frozen floating-point parameter of ``model`` holds a ``dtype`` copy.

    Trainable parameters, an adapter's own parameters (a loaded expert's vectors are frozen; they are tiny, so
    casting them saves nothing, and bf16 would round each value by up to 0.4%, about 1% of what training moved the
    code expert's) and buffers (rotary frequencies, SVF's factors) keep their dtype: autocast still handles them.
    A tied parameter is cast once. ``dtype=None`` changes nothing. On exit, also after an error, each parameter
    holds its original tensor again (the same object).
    """
    originals: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        if dtype is not None:
            adapters = {id(param) for param in adapter_parameters(model)}
            with torch.no_grad():
                for param in model.parameters():  # each tied parameter once
                    if (
                        param.requires_grad
                        or id(param) in adapters
                        or not param.is_floating_point()
                        or param.dtype == dtype
                    ):
                        continue
                    originals.append((param, param.data))
                    param.data = param.data.to(dtype)
        yield
    finally:
        for param, data in originals:
            param.data = data


def adapter_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters PEFT's tuner layers hold per adapter (``adapter_layer_names``: SVF's vectors, LoRA's A, B)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                yield from getattr(module, attr).parameters()


@contextmanager
def contiguous_head_input(model: nn.Module) -> Iterator[None]:
    """Inside the block, the output head (``get_output_embeddings``) reads a contiguous input.

    transformers slices the hidden states for ``logits_to_keep`` (``[:, -k:, :]``), a view torch's matmul
    cannot fold into one matrix product: it multiplies row by row against the head's weight expanded per
    row, which it copies in bfloat16. For SmolLM2's head and 16 rows: 1.1 s instead of 6 ms in bfloat16,
    52 instead of 10 ms in float32 (a first decoding step); 1.9 s instead of 0.46 s for a bfloat16 forward
    and backward over 17 positions. The copy it makes instead is of the kept hidden states only.
    """
    head = model.get_output_embeddings()
    handle = None
    if head is not None:
        handle = head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


# The weight-sized buffers of SVF's layers; its singular values stay float32 (the gain is computed from them).
SVF_FACTORS = ("svf_U", "svf_Vh")


@contextmanager
def factors_in(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside the block, the factors ``U`` and ``V`` of every SVF layer of ``model`` are ``dtype`` copies.

    Autocast casts them at every forward (buffers are not in its cache of cast weights): cast them once for a
    whole training instead, to the values autocast would cast them to. Unlike ``SVFConfig.factors_dtype`` this
    is no property of the adapter: a saved adapter records nothing of it, and on exit, also after an error,
    each layer holds its original factors again. ``dtype=None`` changes nothing.
    """
    originals: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        if dtype is not None:
            for module in model.modules():
                for name in SVF_FACTORS:
                    factor = module._buffers.get(name)
                    if factor is not None and factor.is_floating_point() and factor.dtype != dtype:
                        originals.append((module, name, factor))
                        setattr(module, name, factor.to(dtype))
        yield
    finally:
        for module, name, factor in originals:
            setattr(module, name, factor)


@contextmanager
def inference_in(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Inference (``generate``, forwards) on ``model`` in ``dtype`` mixed precision inside the block.

    The frozen weights (:func:`frozen_weights_in`) and SVF's factors (:func:`factors_in`) are cast once for the
    block, autocast covers the rest, and the output head reads a contiguous input. An adapter merged inside the
    block is merged into the cast weights. Adapter vectors stay float32, so what is saved inside is as saved
    outside. ``dtype=None`` changes nothing; on exit every tensor is the one it was.
    """
    if dtype is None:
        yield
        return
    device = next(model.parameters()).device.type
    with (
        frozen_weights_in(model, dtype),
        factors_in(model, dtype),
        torch.autocast(device, dtype=dtype),
        contiguous_head_input(model),
    ):
        yield


def mixed_precision_args(bf16: bool) -> dict[str, bool]:
    """``TrainingArguments``' flags for bf16 mixed precision or none; without CUDA it also asks ``use_cpu``."""
    return {"bf16": bf16, "use_cpu": bf16 and not torch.cuda.is_available()}


def fast_bf16() -> bool:
    """Whether bfloat16 matmuls are faster than float32's here: a CUDA GPU that supports bf16, or a CPU with AMX.

    AVX512-BF16 alone does not pay: on such a CPU (Xeon, AMX not exposed, 2 cores) torch's bf16 matmuls ran at
    0.59-0.74x float32's speed at SmolLM2's MLP shapes (``benchmarks/bf16_matmul.py``), and a classification-expert
    step took 15 s instead of 12 (docs/trainer.md). Without either, torch emulates bf16, slower still.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported()
