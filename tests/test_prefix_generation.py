"""``generate`` with the prompts' common prefix run once: the tokens each row would get alone, or a plain call.

The reference is each row generated on its own, unpadded and without any cache given: no layout or position
handling of ``generate_sharing_prefix`` is involved in it.
"""

from __future__ import annotations

import random

import pytest
import torch
from peft import get_peft_model
from transformers import GenerationConfig

from peft_svf import SVFConfig, prefix
from peft_svf.prefix import MIN_SHARED_PREFIX, generate_sharing_prefix
from peft_svf.tasks import generate_completions
from tiny_models import make_tiny_gpt2, make_tiny_llama
from trainer_fixtures import tiny_llama, tiny_tokenizer

NEW_TOKENS = 6
PAD = 0


def rows_with_prefix(n: int, shared: int = 20, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    common = [rng.randrange(1, 96) for _ in range(shared)]
    return [common + [rng.randrange(1, 96) for _ in range(rng.randint(2, 8))] for _ in range(n)]


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# min_new_tokens keeps every row at NEW_TOKENS tokens, so that rows alone and in a batch stop alike
GREEDY = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": PAD}


@pytest.fixture
def prefix_forwards(monkeypatch) -> list[int]:
    """The lengths of the prefixes ``generate_sharing_prefix`` ran (none: it made a plain call)."""
    lengths, original = [], prefix.prefix_cache

    def counted(model, ids, batch):
        lengths.append(len(ids))
        return original(model, ids, batch)

    monkeypatch.setattr(prefix, "prefix_cache", counted)
    return lengths


@pytest.mark.parametrize("make_model", [make_tiny_llama, make_tiny_gpt2], ids=["rope", "absolute positions"])
def test_shared_prefix_generates_what_each_row_generates_alone(make_model, prefix_forwards):
    model = make_model()
    rows = rows_with_prefix(5)
    ids, mask = left_padded(rows)
    with torch.no_grad():
        out = generate_sharing_prefix(model, ids, mask, **GREEDY)
        alone = [model.generate(torch.tensor([r]), **GREEDY)[0, len(r) :] for r in rows]
    assert prefix_forwards == [20]
    assert out.shape == (len(rows), ids.size(1) + NEW_TOKENS)
    for generated, reference in zip(out[:, ids.size(1) :], alone, strict=True):
        assert generated.tolist() == reference.tolist()


class RecordingModel:
    """Stands in for a model where ``generate`` must be called plainly: records what it was given."""

    generation_config = GenerationConfig()

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        return kwargs["input_ids"]


@pytest.mark.parametrize(
    "case",
    ["one row", "short prefix", "several sequences", "beams", "sequences in a generation config", "own cache",
     "adapter names", "right padded", "pad column"],
)
def test_plain_call_where_the_prefix_cannot_be_shared(case):
    rows = rows_with_prefix(1 if case == "one row" else 3, shared=MIN_SHARED_PREFIX - 1 if case == "short prefix" else 20)
    ids, mask = left_padded(rows)
    kwargs = {"max_new_tokens": 2}
    extra = {"several sequences": {"num_return_sequences": 2}, "beams": {"num_beams": 2}, "own cache": {"cache": None},
             "sequences in a generation config": {"generation_config": GenerationConfig(num_return_sequences=2, do_sample=True)},
             "adapter names": {"adapter_names": ["a", "b", "a"]}}.get(case, {})  # fmt: skip
    if case == "right padded":
        width = ids.size(1)
        ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    if case == "pad column":
        ids, mask = torch.cat([torch.zeros_like(ids[:, :1]), ids], 1), torch.cat([torch.zeros_like(mask[:, :1]), mask], 1)
    model = RecordingModel()
    generate_sharing_prefix(model, ids, mask, **kwargs, **extra)
    (call,) = model.calls
    assert call["input_ids"] is ids and call["attention_mask"] is mask
    assert set(call) == {"input_ids", "attention_mask", *kwargs, *extra}


def test_generate_completions_shares_the_prefix_of_a_peft_model(prefix_forwards):
    tokenizer = tiny_tokenizer()
    model = get_peft_model(tiny_llama(len(tokenizer)), SVFConfig(target_modules=["q_proj", "v_proj"], svd_cache=False))
    with torch.no_grad():  # off the identity: the adapted model differs from the base
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    prompts = [f"answer with one letter, then stop: {w}" for w in ("ab", "cdefg", "h", "bead")]
    kwargs = {"max_new_tokens": NEW_TOKENS, "batch_size": 4, "progress": False}
    shared = generate_completions(model, tokenizer, prompts, **kwargs)
    assert len(prefix_forwards) == 1 and prefix_forwards[0] >= MIN_SHARED_PREFIX
    plain = generate_completions(model, tokenizer, prompts, share_prompt_prefix=False, **kwargs)
    alone = [generate_completions(model, tokenizer, [p], **kwargs)[0] for p in prompts]
    assert len(prefix_forwards) == 1  # neither the plain calls nor single prompts ran a prefix
    assert shared == plain == alone
