"""Rollout sampling whose randomness belongs to the sample, not to the batch or the process.

``generate(do_sample=True)`` draws from the global RNG, so what one prompt gets depends on which other
prompts share its batch and on which process runs it. Here each row carries its own ``torch.Generator``,
seeded from a key of the sample (seed, step, prompt, generation index); temperature, top-k and top-p are
applied to the logits and Gumbel noise from that generator is added, and greedy decoding then takes the
argmax, which is an exact sample of the filtered softmax (the Gumbel-max trick). One process or two,
resumed or not, a prompt at a given step always gets the same completion.
"""

from __future__ import annotations

import zlib

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def sample_key(*parts: object) -> int:
    """Stable 31-bit seed from the parts' text (Python's ``hash`` is salted per process)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode()) & 0x7FFFFFFF


class GumbelNoiseProcessor(LogitsProcessor):
    """Adds per-row Gumbel noise from per-row generators, turning greedy decoding into seeded sampling."""

    def __init__(self, seeds: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniform = torch.stack(
            [torch.rand(scores.size(1), generator=g, dtype=torch.float64) for g in self.generators]
        ).clamp_(min=1e-12, max=1.0 - 1e-12)
        gumbel = -torch.log(-torch.log(uniform))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


def seeded_sampling_processors(
    seeds: list[int], temperature: float, top_k: int, top_p: float
) -> LogitsProcessorList:
    """Logits processors that make greedy ``generate`` sample with the given per-row seeds."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(GumbelNoiseProcessor(seeds))
    return processors
