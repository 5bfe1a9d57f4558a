"""Unit tests of the objective's pieces: masks, advantages, aggregation, KL, seeded sampling, config."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from peft_svf.trainer import SVFTrainingConfig
from peft_svf.trainer.objective import aggregate_per_sequence, completion_mask, compute_advantages, token_kl
from peft_svf.trainer.sampling import GumbelNoiseProcessor, sample_key, seeded_sampling_processors
from trainer_fixtures import tiny_llama, tiny_tokenizer

EOS = 0  # also the pad token, as in SmolLM2


def test_completion_mask_keeps_the_first_eos_and_drops_the_padding_after_it():
    ids = torch.tensor([[5, 6, EOS, EOS, EOS], [EOS, EOS, EOS, EOS, EOS], [5, 6, 7, 8, 9], [5, 9, 7, EOS, 3]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert torch.equal(completion_mask(ids, [EOS]), expected)


def test_completion_mask_stops_at_any_declared_eos():
    ids = torch.tensor([[5, 42, 6, EOS]])
    assert torch.equal(completion_mask(ids, [EOS, 42]), torch.tensor([[1, 1, 0, 0]]))


def test_advantage_baselines():
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    assert torch.equal(compute_advantages(rewards, 3, "none", scale_rewards="none"), rewards)
    torch.testing.assert_close(
        compute_advantages(rewards, 1, "batch_mean", scale_rewards="none"), rewards - 1 / 3
    )
    group = compute_advantages(rewards, 3, "group_mean", scale_rewards="none")
    torch.testing.assert_close(group, torch.tensor([4 / 3, -2 / 3, -2 / 3, 0.0, 0.0, 0.0]))
    loo = compute_advantages(rewards, 3, "leave_one_out", scale_rewards="none")
    torch.testing.assert_close(loo, torch.tensor([2.0, -1.0, -1.0, 0.0, 0.0, 0.0]))
    z = compute_advantages(rewards, 1, "batch_mean", scale_rewards="batch")
    torch.testing.assert_close(z.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # All rewards equal: nothing to learn from, and no division by a zero std.
    assert torch.equal(
        compute_advantages(torch.ones(4), 1, "batch_mean", scale_rewards="batch"), torch.zeros(4)
    )


def test_group_reward_scaling_divides_each_prompt_by_its_own_std():
    rewards = torch.tensor([1.0, -1.0, -1.0, 3.0, 1.0, 2.0])
    scaled = compute_advantages(rewards, 3, "group_mean", scale_rewards="group")
    for group, expected in zip(rewards.view(2, 3).tolist(), scaled.view(2, 3), strict=True):
        mean = sum(group) / 3
        std = (sum((r - mean) ** 2 for r in group) / 2) ** 0.5  # unbiased, as torch.std and TRL
        torch.testing.assert_close(expected, torch.tensor([(r - mean) / (std + 1e-6) for r in group]))


def test_aggregation_sums_or_averages_over_the_completion_only():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]]).float()
    assert torch.equal(aggregate_per_sequence(values, mask, "sequence_sum"), torch.tensor([3.0, 15.0]))
    assert torch.equal(aggregate_per_sequence(values, mask, "grpo"), torch.tensor([1.5, 5.0]))


def test_token_kl_is_the_exact_kl_of_the_adapted_from_the_base_distribution():
    torch.manual_seed(0)
    logps = torch.log_softmax(torch.randn(2, 3, 11), dim=-1)
    base = torch.log_softmax(torch.randn(2, 3, 11), dim=-1)
    expected = F.kl_div(base, logps, log_target=True, reduction="none").sum(-1)  # KL(p || base)
    torch.testing.assert_close(token_kl(logps, base), expected)
    torch.testing.assert_close(token_kl(logps, logps), torch.zeros(2, 3))


def test_gumbel_noise_samples_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(4)
    processor = GumbelNoiseProcessor([123])
    for _ in range(4000):
        counts[processor(None, logits.clone()).argmax()] += 1
    torch.testing.assert_close(counts / 4000, logits.softmax(-1)[0], atol=0.03, rtol=0)


def test_seeded_sampling_does_not_depend_on_batch_partners():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    prompts = ["abcdef", "hgfedc", "aabbcc", "ddeeff"]
    config = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=EOS, eos_token_id=EOS)

    def sample(batch: list[str]) -> list[list[int]]:
        ids = tokenizer(batch, return_tensors="pt")["input_ids"]
        processors = seeded_sampling_processors([sample_key(0, 1, p) for p in batch], 1.0, 0, 1.0)
        out = model.generate(input_ids=ids, generation_config=config, logits_processor=processors)
        return completion_mask(out[:, ids.size(1) :], [EOS]).mul(out[:, ids.size(1) :]).tolist()

    together = sample(prompts)
    alone = [sample([p])[0] for p in prompts]
    reversed_batch = sample(prompts[::-1])[::-1]
    trim = [[t for t in row if t] for row in together]
    assert (
        trim == [[t for t in row if t] for row in alone] == [[t for t in row if t] for row in reversed_batch]
    )
    assert len({tuple(row) for row in trim}) > 1
    # Another step (another key) gives other samples.
    ids = tokenizer(prompts, return_tensors="pt")["input_ids"]
    other = model.generate(
        input_ids=ids,
        generation_config=config,
        logits_processor=seeded_sampling_processors([sample_key(0, 2, p) for p in prompts], 1.0, 0, 1.0),
    )[:, ids.size(1) :]
    assert completion_mask(other, [EOS]).mul(other).tolist() != together


def test_top_k_restricts_the_seeded_samples():
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0, 0.0]])
    processors = seeded_sampling_processors(list(range(200)), temperature=3.0, top_k=2, top_p=1.0)
    picks = processors(None, logits.repeat(200, 1)).argmax(-1)
    assert set(picks.tolist()) == {0, 1}


def test_config_defaults_follow_the_paper(tmp_path):
    args = SVFTrainingConfig(str(tmp_path), report_to=[])
    assert args.learning_rate == 2e-3
    assert args.lr_scheduler_type.value == "cosine"
    assert args.max_grad_norm == 1e-3
    assert args.optim.value.startswith("adamw")
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 256
    assert args.loss_type == "sequence_sum" and args.scale_rewards == "none"
    assert (
        args.metric_for_best_model == "accuracy" and args.greater_is_better is None
    ) or args.greater_is_better


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"kl_coef": 0.3}, {"beta": 0.3}),
        ({"scale_advantages": True}, {"scale_rewards": "batch"}),
        ({"scale_advantages": False}, {"scale_rewards": "none"}),
        ({"loss_aggregation": "token_mean"}, {"loss_type": "grpo"}),
        ({"loss_aggregation": "sequence_sum"}, {"loss_type": "sequence_sum"}),
    ],
)
def test_config_maps_the_first_release_names_onto_trls_with_a_warning(tmp_path, old, new):
    with pytest.warns(FutureWarning, match=f"`{next(iter(old))}` is deprecated"):
        args = SVFTrainingConfig(str(tmp_path), report_to=[], **old)
    assert {name: getattr(args, name) for name in new} == new
    assert getattr(args, next(iter(old))) is None  # cleared, so a copy does not see both names set
    assert dataclasses.replace(args, beta=0.05).beta == 0.05


@pytest.mark.parametrize(
    "both", [{"kl_coef": 0.3, "beta": 0.2}, {"scale_advantages": True, "scale_rewards": "group", "num_generations": 2},
             {"loss_aggregation": "token_mean", "loss_type": "grpo"}],
)  # fmt: skip
def test_config_rejects_an_old_and_a_new_name_together(tmp_path, both):
    with pytest.raises(ValueError, match="deprecated name"):
        SVFTrainingConfig(str(tmp_path), report_to=[], **both)


def test_config_reads_trls_boolean_scale_rewards_as_trl_does(tmp_path):
    assert SVFTrainingConfig(str(tmp_path), report_to=[], scale_rewards=False).scale_rewards == "none"
    grouped = SVFTrainingConfig(str(tmp_path), report_to=[], scale_rewards=True, num_generations=2)
    assert grouped.scale_rewards == "group"
    with pytest.raises(ValueError, match="num_generations >= 2"):
        SVFTrainingConfig(str(tmp_path), report_to=[], scale_rewards="group")
    with pytest.raises(ValueError, match="loss_type"):
        SVFTrainingConfig(
            str(tmp_path), report_to=[], loss_type="dapo"
        )  # TRL's, with a clipped ratio we lack


def test_config_rejects_group_baselines_without_several_generations(tmp_path):
    with pytest.raises(ValueError, match="num_generations >= 2"):
        SVFTrainingConfig(str(tmp_path), advantage_baseline="leave_one_out", num_generations=1, report_to=[])


@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_loss_equals_equation_one_against_a_separate_base_model(tmp_path, beta):
    from trainer_fixtures import make_trainer, prompts

    trainer = make_trainer(str(tmp_path), beta=beta, temperature=0.7, max_completion_length=5)
    model = trainer.model
    with torch.no_grad():  # move the vectors off the identity so the adapted and base models differ
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    inputs = trainer._prepare_inputs([{"prompt": p} for p in prompts(16, seed=3)])
    loss = trainer.compute_loss(model, inputs)

    base = tiny_llama(len(tiny_tokenizer()))  # the same seed as the trainer's base: an independent copy
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    start, mask = inputs["prompt_ids"].size(1) - 1, inputs["completion_mask"].double()
    with torch.no_grad():
        adapted = F.log_softmax(
            model(input_ids=ids, attention_mask=attention).logits[:, start:-1].double() / 0.7, -1
        )
        reference = F.log_softmax(
            base(input_ids=ids, attention_mask=attention).logits[:, start:-1].double() / 0.7, -1
        )
    chosen = adapted.gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    kl = (adapted.exp() * (adapted - reference)).sum(-1)
    expected = (
        -(inputs["advantages"].double() * (chosen * mask).sum(1)).mean() + beta * (kl * mask).sum(1).mean()
    )
    assert 0 < inputs["completion_mask"].sum() < inputs["completion_mask"].numel()  # some stopped early
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-4)
    logged = trainer._metrics["train"].get("kl", [])
    if beta:
        assert logged[-1] == pytest.approx(((kl * mask).sum() / mask.sum()).item(), rel=1e-4)
    else:
        assert not logged


def _reward_after(flat_steps: int):
    """-1 for every completion of the first ``flat_steps`` batches; then +1 for a completion whose first character
    has an even code point, -1 otherwise (about half of a random model's samples: rewards that differ)."""
    calls = []

    def reward(completions, **columns):
        calls.append(len(completions))
        if len(calls) <= flat_steps:
            return [-1.0] * len(completions)
        return [1.0 if text and ord(text[0]) % 2 == 0 else -1.0 for text in completions]

    return reward


@pytest.mark.parametrize(("beta", "forwards_skipped"), [(0.0, 3), (0.2, 0)])
def test_a_batch_of_equal_rewards_skips_the_update_forward_and_trains_exactly_as_if_it_ran(
    tmp_path, monkeypatch, beta, forwards_skipped
):
    """With ``beta`` 0, a batch whose advantages are all 0 has an exactly zero gradient: its forward and backward
    are skipped, and the vectors and Adam's moments after 3 such steps and 3 learning ones are bit for bit those
    of the same run with every forward computed. With ``beta`` > 0 the KL term still pulls: nothing is skipped."""
    from peft_svf.trainer import SVFTrainer
    from trainer_fixtures import adapter_state, make_trainer

    def run(folder, skip):
        forwards = []
        original = SVFTrainer._completion_logits
        monkeypatch.setattr(SVFTrainer, "_completion_logits",
                            lambda self, model, inputs: forwards.append(1) or original(self, model, inputs))  # fmt: skip
        if not skip:
            monkeypatch.setattr(SVFTrainer, "_nothing_to_learn", lambda self, inputs: False)
        trainer = make_trainer(str(tmp_path / folder), reward_funcs=_reward_after(3), beta=beta, max_steps=6,
                               logging_steps=1)
        initial = adapter_state(trainer.model)
        trainer.train()
        monkeypatch.undo()
        moments = [state["exp_avg"].clone() for state in trainer.optimizer.state.values()]
        rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
        return initial, adapter_state(trainer.model), moments, rewards, len(forwards)

    initial, vectors, moments, rewards, forwards = run("skipping", skip=True)
    _, full_vectors, full_moments, full_rewards, full_forwards = run("computing", skip=False)
    assert rewards[:3] == [-1.0] * 3 and any(r > -1.0 for r in rewards[3:])  # three flat batches, then learning
    assert rewards == full_rewards
    assert forwards == full_forwards - forwards_skipped
    assert vectors.keys() == full_vectors.keys() and moments
    assert all(torch.equal(vectors[name], full_vectors[name]) for name in vectors)
    assert all(torch.equal(a, b) for a, b in zip(moments, full_moments, strict=True))
    assert any(not torch.equal(vectors[name], initial[name]) for name in vectors)  # the learning steps moved them
