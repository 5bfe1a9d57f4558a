"""Rollouts stop where every reward stops reading: shorter completions, the same rewards, and a mask that ends at
the stop even though the padding after it is EOS (the tiny tokenizer's pad, as SmolLM2's)."""

from __future__ import annotations

from peft_svf.trainer.objective import completion_mask
from test_trainer_prefix import (
    PREFIX,
    assert_loss_and_gradients_equal_each_row_alone,
    moved_trainer,
    shared_prompts,
)

READ = 3  # characters the reward reads (one token each)


def first_letters(completions, **_):
    """+1 when an 'e' is among the first READ characters: nothing after them can change it."""
    return [1.0 if "e" in c[:READ] else -1.0 for c in completions]


first_letters.completion_done = lambda text: len(text) >= READ


def masked(rollout) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(rollout["completion_ids"], rollout["completion_mask"], strict=True)]


def test_stopped_rollouts_are_the_whole_ones_cut_where_the_reward_is_done(tmp_path):
    rows = [{"prompt": p} for p in shared_prompts(12, seed=2)]
    runs = {}
    for stop in (True, False):
        trainer = moved_trainer(tmp_path / str(stop), reward_funcs=first_letters, stop_when_rewards_done=stop)
        for sample in (True, False):
            runs[stop, sample] = trainer._generate(rows, num_generations=2, sample=sample)
    eos, tokenizer = trainer.eos_token_ids, trainer.processing_class
    for sample in (True, False):
        whole, stopped = runs[False, sample], runs[True, sample]
        # Independently: each whole row (up to and including EOS) cut after its first tokens whose text is done.
        ends = [next((k for k in range(len(ids) + 1) if first_letters.completion_done(tokenizer.decode(ids[:k],
                skip_special_tokens=True))), len(ids)) for ids in masked(whole)]  # fmt: skip
        assert masked(stopped) == [ids[:end] for ids, end in zip(masked(whole), ends, strict=True)]
        assert stopped["rewards"].tolist() == whole["rewards"].tolist()
        # Rows stopped before the batch's last column are padded with EOS, which would count without the stop:
        padded = [i for i, ids in enumerate(masked(whole)) if ends[i] < min(len(ids), stopped["completion_ids"].size(1))]
        assert padded
        assert all(completion_mask(stopped["completion_ids"], eos)[i].sum() == ends[i] + 1 for i in padded)
    assert masked(runs[True, True]) != masked(runs[True, False])


def test_loss_of_a_stopped_rollout_equals_each_row_alone(tmp_path):
    trainer = moved_trainer(tmp_path, reward_funcs=first_letters)  # beta 0.2
    prompts = shared_prompts(16, seed=3)
    inputs = trainer._prepare_inputs([{"prompt": p} for p in prompts])
    assert inputs["shared_prefix_length"] == len(PREFIX)
    assert inputs["completion_mask"].sum(1).max() < inputs["completion_ids"].size(1) + 1
    trainer.model.train()
    assert_loss_and_gradients_equal_each_row_alone(trainer, prompts, inputs)
