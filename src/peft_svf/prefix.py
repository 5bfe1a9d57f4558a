"""Prompts that start alike: their common prefix runs once, and its KV cache serves every row.

Classification prompts (pass 1, the z_c training rows) repeat ~180 tokens of instructions in every row, and
chat prompts repeat the template's system text. Rows are laid out as that prefix followed by each row's own
tokens, left-padded, and positions are counted over real tokens only (as ``generate`` counts them), so a
forward over the suffixes with the prefix's cache gives what a forward over the whole rows gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# Below this many common tokens, caching a shared prompt prefix is not worth a separate forward pass.
MIN_SHARED_PREFIX = 16


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def prefix_layout(
    rows: Sequence[Sequence[int]], shared: int, pad: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask): the ``shared`` common tokens, then each row's remaining tokens left-padded.

    With ``shared=0`` this is the usual left-padded batch.
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        own = len(r) - shared
        ids[i, :shared], mask[i, :shared] = torch.tensor(list(r[:shared]), dtype=torch.long), 1
        ids[i, width - own :], mask[i, width - own :] = torch.tensor(list(r[shared:]), dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among its row's real tokens, exactly as ``generate`` derives ``position_ids``."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def prefix_cache(model: Any, prefix: torch.Tensor | Sequence[int], batch: int) -> Any:
    """The KV cache of ``prefix``, computed once and repeated for ``batch`` rows.

    Under ``torch.enable_grad`` the repeat is part of the graph, so each row's gradient reaches the prefix's
    activations (summed over rows, as if every row had run it). Not with gradient checkpointing, which drops
    caches: check :func:`can_share_prefix` first.
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(prefix, dtype=torch.long, device=device).reshape(1, -1)
    out = model(input_ids=ids, use_cache=True)
    cache = out.cache if "cache" in out else out.past_key_values
    cache.batch_repeat_interleave(batch)
    return cache


def can_share_prefix(model: torch.nn.Module) -> bool:
    """False where a forward would drop the prefix cache: gradient checkpointing in training, with gradients.

    Read off the layers themselves, so that a wrapper (DDP, PEFT) hiding the model's own flag does not matter.
    """
    if not (torch.is_grad_enabled() and model.training):
        return True
    return not any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


def _is_tightly_left_padded(mask: torch.Tensor) -> bool:
    """Every row's real tokens are its last ones (what ``generate`` expects of a decoder-only batch), and the
    longest row fills the width: the layout :func:`prefix_layout` rebuilds, so the generated columns stay put."""
    width = mask.size(1)
    real = mask.sum(dim=1, keepdim=True)
    return int(real.max()) == width and torch.equal(mask.bool(), torch.arange(width, device=mask.device) >= width - real)


def generate_sharing_prefix(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **generate_kwargs: Any
) -> Any:
    """``model.generate`` for a left-padded batch, the prompts' common prefix run once for all rows.

    The rows are laid out again (prefix, padding, each row's own tokens; the width unchanged), so the returned
    sequences carry their padding between prefix and the rest of the prompt; the generated columns are where
    a plain call puts them. A plain call is made where there is nothing to share, where ``generate`` would
    expand the rows (several sequences per prompt, beams), where the call brings its own cache, or where rows
    carry different adapters (``adapter_names``): the one prefix forward could not serve them.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    plain = dict(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
    config = generate_kwargs.get("generation_config") or model.generation_config
    expands = any(
        (generate_kwargs.get(key) or getattr(config, key, 1) or 1) > 1
        for key in ("num_return_sequences", "num_beams")
    )
    unshareable = any(key in generate_kwargs for key in ("cache", "past_key_values", "adapter_names"))
    if input_ids.size(0) < 2 or expands or unshareable or not _is_tightly_left_padded(attention_mask):
        return model.generate(**plain)
    rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask, strict=True)]
    shared = shared_prefix_length(rows)
    if not shared:
        return model.generate(**plain)
    padding = input_ids[attention_mask == 0]  # the caller's pad id (any id would do: masked out)
    ids, mask = prefix_layout(rows, shared, int(padding[0]) if len(padding) else 0, input_ids.device)
    cache = prefix_cache(model, rows[0][:shared], len(rows))
    return model.generate(input_ids=ids, attention_mask=mask, cache=cache, **generate_kwargs)
