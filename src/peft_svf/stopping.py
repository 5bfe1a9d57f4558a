"""Ending each row of a batched ``generate`` once its text is complete, and knowing where each row ended."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import StoppingCriteria


class RowsDone(StoppingCriteria):
    """Stops a row once the text it has generated satisfies ``done`` (a closed code block, a complete
    ``\\boxed{}``). ``width`` is the width of the ``input_ids`` handed to ``generate``; one instance per call.

    ``lengths[i]`` is how many tokens row ``i`` had generated when it was stopped (None while it runs).
    ``generate`` pads a stopped row with the pad token, which is often EOS, so only these lengths tell a
    stopped row's padding from an EOS it sampled.
    """

    def __init__(self, tokenizer: Any, width: int, done: Callable[[str], bool]) -> None:
        self.tokenizer, self.width, self.done = tokenizer, width, done
        self.lengths: list[int | None] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.width :]
        if not self.lengths:
            self.lengths = [None] * input_ids.size(0)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        stopped = []
        for i, text in enumerate(texts):
            if self.lengths[i] is None and self.done(text):
                self.lengths[i] = generated.size(1)
            stopped.append(self.lengths[i] is not None)
        return torch.tensor(stopped, dtype=torch.bool, device=input_ids.device)

    def ends(self, rows: int, generated: int) -> list[int]:
        """How many of the ``generated`` columns each row keeps: up to its stop, or all of them."""
        lengths = self.lengths or [None] * rows
        return [generated if n is None else n for n in lengths]

    def mask(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """1 for the tokens each row generated before it was stopped (every token for a row never stopped)."""
        ends = torch.tensor(self.ends(*completion_ids.shape), device=completion_ids.device)
        positions = torch.arange(completion_ids.size(1), device=completion_ids.device)
        return (positions < ends.unsqueeze(1)).long()
