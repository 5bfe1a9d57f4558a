"""The special tokens generation needs from a tokenizer: a pad token, and every id that ends a completion."""

from __future__ import annotations

from typing import Any


def ensure_pad_token(tokenizer: Any) -> int:
    """The pad token id, setting the pad token to EOS when there is none (the usual stand-in for chat models).

    Left-padded batches need one; with EOS as pad, the completion masks must keep the first EOS
    (:func:`peft_svf.trainer.objective.completion_mask` does).
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def eos_token_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS, then the generation config's (an end-of-turn
    token, say), each once; empty when neither declares one."""
    declared = generation_config.eos_token_id
    ids = [tokenizer.eos_token_id] + (
        [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    )
    return list(dict.fromkeys(i for i in ids if i is not None))
