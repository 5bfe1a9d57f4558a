"""Prompts that share their first tokens: run once per rollout and forward, with the same loss and gradients.

The reference is each row on its own, unpadded, through the model and through an independent copy of the base
model: no layout, cache or position handling of the trainer's is involved in it.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from peft_svf.prefix import MIN_SHARED_PREFIX
from trainer_fixtures import make_trainer, tiny_llama, tiny_tokenizer

PREFIX = "answer with one letter, then stop: "
TEMPERATURE = 0.7


def shared_prompts(n: int, seed: int = 0) -> list[str]:
    """The common instruction, then 3 to 9 letters: rows of different lengths, padded between prefix and rest."""
    rng = random.Random(seed)
    return [PREFIX + "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 9))) for _ in range(n)]


def moved_trainer(tmp_path, **overrides):
    trainer = make_trainer(str(tmp_path), beta=0.2, temperature=TEMPERATURE, max_completion_length=8, **overrides)
    with torch.no_grad():  # off the identity, so that the adapted and base models differ
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return trainer


def row_by_row_loss(trainer, prompts: list[str], inputs: dict, beta: float) -> torch.Tensor:
    """Equation 1 from each row alone: its prompt and completion tokens, no padding, no shared cache."""
    tokenizer, base = trainer.processing_class, tiny_llama(len(tiny_tokenizer()))
    policy, total = 0.0, 0.0
    for i, prompt in enumerate(prompts):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion = inputs["completion_ids"][i][inputs["completion_mask"][i].bool()].tolist()
        ids = torch.tensor([prompt_ids + completion])
        span = slice(len(prompt_ids) - 1, ids.size(1) - 1)
        adapted = F.log_softmax(trainer.model(input_ids=ids).logits[0, span].double() / TEMPERATURE, -1)
        with torch.no_grad():
            reference = F.log_softmax(base(input_ids=ids).logits[0, span].double() / TEMPERATURE, -1)
        chosen = adapted.gather(-1, torch.tensor(completion).unsqueeze(-1)).sum()
        policy = policy - inputs["advantages"][i].double() * chosen
        total = total + (adapted.exp() * (adapted - reference)).sum()
    return (policy + beta * total) / len(prompts)


def assert_loss_and_gradients_equal_each_row_alone(trainer, prompts: list[str], inputs: dict) -> None:
    """The batch's loss and gradients against ``row_by_row_loss`` (beta 0.2, ``moved_trainer``'s)."""
    got = gradients(trainer, loss := trainer.compute_loss(trainer.model, inputs))
    expected_loss = row_by_row_loss(trainer, prompts, inputs, beta=0.2)
    expected = gradients(trainer, expected_loss)
    torch.testing.assert_close(loss.double(), expected_loss.detach(), rtol=1e-4, atol=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def gradients(trainer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_loss_and_gradients_equal_each_row_alone(tmp_path, checkpointing):
    trainer = moved_trainer(tmp_path)
    prompts = shared_prompts(16)
    inputs = trainer._prepare_inputs([{"prompt": p} for p in prompts])
    assert inputs["shared_prefix_length"] == len(PREFIX) >= MIN_SHARED_PREFIX  # one token per character
    assert not inputs["prompt_mask"][:, len(PREFIX)].all()  # shorter rows are padded after the prefix
    assert 0 < inputs["completion_mask"].sum() < inputs["completion_mask"].numel()  # some stopped early
    trainer.model.train()
    if checkpointing:  # drops KV caches in training forwards: the trainer must then run whole rows
        trainer.model.base_model.model.activation_checkpointing_enable({"use_reentrant": False})
    assert_loss_and_gradients_equal_each_row_alone(trainer, prompts, inputs)


def test_rollouts_with_a_shared_prefix_are_the_rollouts_of_whole_rows(tmp_path):
    prompts = shared_prompts(12, seed=1)
    rows = [{"prompt": p} for p in prompts]
    results = {}
    for share in (True, False):
        trainer = moved_trainer(tmp_path / str(share), share_prompt_prefix=share)
        for sample in (True, False):
            rollout = trainer._generate(rows, num_generations=2, sample=sample)
            completions = [
                ids[m.bool()].tolist()
                for ids, m in zip(rollout["completion_ids"], rollout["completion_mask"], strict=True)
            ]
            results[share, sample] = (completions, rollout["rewards"].tolist(), rollout["shared_prefix_length"])
    for sample in (True, False):
        assert results[True, sample][:2] == results[False, sample][:2]
        assert (results[True, sample][2], results[False, sample][2]) == (len(PREFIX), 0)
    assert results[True, True][0] != results[True, False][0]  # sampling is not greedy decoding here


def test_prompts_over_max_prompt_length_keep_their_last_tokens(tmp_path):
    trainer = make_trainer(str(tmp_path), max_prompt_length=30, max_completion_length=2)
    prompts = [PREFIX + "abc", "abcdefgh", PREFIX + "abcdefgh"]  # 38, 8 and 43 tokens
    rollout = trainer._generate([{"prompt": p} for p in prompts], num_generations=1, sample=False)
    kept = [ids[m.bool()].tolist() for ids, m in zip(rollout["prompt_ids"], rollout["prompt_mask"], strict=True)]
    assert kept == [trainer.processing_class(p)["input_ids"][-30:] for p in prompts]
    assert [len(k) for k in kept] == [30, 8, 30]
