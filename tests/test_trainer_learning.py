"""SVFTrainer end to end on tiny Llamas: it learns an easy reward, logs, evaluates and keeps the best checkpoint."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file

from peft_svf.tasks import RewardError
from peft_svf.trainer import SVFTrainer, SVFTrainingConfig
from trainer_fixtures import (
    adapter_config,
    adapter_state,
    make_trainer,
    prompts,
    starts_with,
    tiny_llama,
    tiny_tokenizer,
)


def _base_state(trainer: SVFTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("kind", ["svf", "lora"])
def test_easy_reward_is_learned_and_base_weights_stay(tmp_path, kind):
    eval_set = Dataset.from_dict({"prompt": prompts(32, seed=1)})
    trainer = make_trainer(
        str(tmp_path), kind, eval_dataset=eval_set, eval_strategy="steps", eval_steps=30, eval_on_start=True
    )
    base_before = _base_state(trainer)
    trainer.train()

    history = trainer.state.log_history
    train_logs = [h for h in history if "reward" in h]
    evals = [h["eval_accuracy"] for h in history if "eval_accuracy" in h]
    assert len(train_logs) == 30
    for key in ("reward", "reward_std", "accuracy", "completions/mean_length", "learning_rate"):
        assert all(key in h for h in train_logs), key
    # beta=0 (the fixture's): like TRL with beta=0, the base forward is skipped and no KL is logged.
    assert not any("kl" in h for h in train_logs) and all(h["kl_time"] == 0 for h in train_logs)
    assert all(h["rollout_time"] > 0 and h["update_time"] > 0 for h in train_logs)
    first = sum(h["reward"] for h in train_logs[:5]) / 5
    last = sum(h["reward"] for h in train_logs[-5:]) / 5
    # "e" is one of 45 tokens: the base model starts with it about 1 time in 8.
    assert first < -0.5 and last > first + 0.8, (first, last)
    assert evals[-1] >= evals[0] + 0.4, evals

    base_after = _base_state(trainer)
    assert base_before.keys() == base_after.keys()
    for name, before in base_before.items():
        # Rollouts merge then unmerge the adapter each step: W + Δ - Δ is W up to float rounding.
        torch.testing.assert_close(base_after[name], before, rtol=0, atol=1e-5, msg=name)


def test_best_checkpoint_by_validation_accuracy_is_restored(tmp_path):
    # Training pushes completions towards "e"; validation rewards a token the base model likes, so
    # validation accuracy falls as training proceeds and the best checkpoint is an early one.
    train = Dataset.from_dict({"prompt": prompts(64), "target": ["e"] * 64})
    valid = Dataset.from_dict({"prompt": prompts(32, seed=1), "target": [":"] * 32})
    trainer = make_trainer(
        str(tmp_path),
        train_dataset=train,
        eval_dataset=valid,
        max_steps=20,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=5,
        load_best_model_at_end=True,
    )
    trainer.train()
    evals = {h["step"]: h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h}
    best_step = max(evals, key=lambda s: (evals[s], -s))
    assert best_step < 20, evals
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")

    saved = load_file(f"{trainer.state.best_model_checkpoint}/adapter_model.safetensors")
    current = adapter_state(trainer.model)
    assert len(saved) == len(current) > 0
    for name, value in saved.items():
        match = [v for n, v in current.items() if n.replace(".default", "") == name]
        assert len(match) == 1, name
        torch.testing.assert_close(match[0], value)
    assert trainer.evaluate()["eval_accuracy"] == evals[best_step]


def test_conversational_prompts_columns_and_several_generations(tmp_path):
    seen: list[dict] = []

    def record(prompts, completions, completion_ids, target, trainer_state, **kwargs):
        seen.append({"prompts": prompts, "completions": completions, "ids": completion_ids, "target": target})
        return starts_with(completions, target)

    rows = prompts(8)
    train = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": p}] for p in rows], "target": [p[0] for p in rows]}
    )
    trainer = make_trainer(
        str(tmp_path),
        train_dataset=train,
        reward_funcs=record,
        per_device_train_batch_size=4,
        num_generations=3,
        advantage_baseline="leave_one_out",
        max_steps=2,
    )
    trainer.train()
    assert len(seen) == 2
    for call in seen:
        assert len(call["prompts"]) == 12  # 4 prompts x 3 generations, each prompt's copies together
        assert all(call["prompts"][i] == call["prompts"][i - i % 3] for i in range(12))
        assert call["target"] == [p[0]["content"][0] for p in call["prompts"]]
        completion = call["completions"][0]
        assert completion[0]["role"] == "assistant" and isinstance(completion[0]["content"], str)
        assert all(len(ids) >= 1 for ids in call["ids"])
    # Seeded sampling differs between the copies of a prompt (not three identical completions everywhere).
    first = seen[0]["completions"]
    assert any(first[i] != first[i + 1] for i in range(0, 12, 3))


def test_only_the_active_adapter_of_a_peft_model_trains(tmp_path):
    model = PeftModel(tiny_llama(len(tiny_tokenizer())), adapter_config("svf"), adapter_name="frozen")
    model.add_adapter("expert", adapter_config("svf"))
    model.set_adapter("expert")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "frozen" in n.split(".")}
    expert_before = adapter_state(model)
    trainer = make_trainer(str(tmp_path), model=model, max_steps=3)
    trainer.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("expert" in n.split(".") for n in trainable)
    assert set(expert_before) == set(trainable)
    for name, value in before.items():
        assert torch.equal(model.get_parameter(name), value), name
    assert any(not torch.equal(model.get_parameter(n), v) for n, v in expert_before.items())


def test_saved_adapter_reloads_to_the_trained_vectors(tmp_path):
    trainer = make_trainer(str(tmp_path), max_steps=3)
    trainer.train()
    trainer.save_model(str(tmp_path / "expert"))
    reloaded = PeftModel.from_pretrained(tiny_llama(len(tiny_tokenizer())), str(tmp_path / "expert"))
    trained = adapter_state(trainer.model)
    for name, value in trained.items():
        torch.testing.assert_close(reloaded.get_parameter(name), value)


def test_requires_an_adapter_or_a_peft_config(tmp_path):
    with pytest.raises(ValueError, match="peft_config"):
        SVFTrainer(
            tiny_llama(len(tiny_tokenizer())),
            starts_with,
            args=SVFTrainingConfig(str(tmp_path), report_to=[]),
            train_dataset=Dataset.from_dict({"prompt": prompts(4)}),
            processing_class=tiny_tokenizer(),
        )


@pytest.mark.parametrize("bad", [float("nan"), None])
def test_a_bad_reward_stops_training_naming_the_function_and_the_sample(tmp_path, bad):
    def flaky(prompts, completions, **kwargs):
        return [bad if i == 3 else 1.0 for i in range(len(completions))]

    trainer = make_trainer(str(tmp_path), reward_funcs=[starts_with, flaky], max_steps=1)
    with pytest.raises(RewardError, match=r"'flaky' returned .* for sample 3 \(prompt="):
        trainer.train()


@pytest.mark.parametrize("kind", ["svf", "lora"])
def test_merged_rollouts_leave_bf16_base_weights_bit_identical(tmp_path, kind):
    trainer = make_trainer(str(tmp_path), kind)
    model = trainer.model.to(torch.bfloat16)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapter = [p for p in model.parameters() if p.requires_grad]
    for step in range(20):  # the vectors move between rollouts, as in training
        with torch.no_grad():
            for p in adapter:
                p.add_(0.05 * torch.randn_like(p))
        with trainer._generation_model() as generation_model:
            assert any(getattr(m, "merged", False) for m in generation_model.modules()), step
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, base[name]), name
