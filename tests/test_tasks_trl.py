"""The task rewards plug into trl.GRPOTrainer unchanged (conversational prompts, extra columns, kwargs)."""

import pytest
import trl

from peft_svf.tasks import get_task
from tasks_tiny_lm import tiny_chat_lm


def test_grpo_trainer_calls_a_task_reward_with_its_columns(tmp_path):
    task = get_task("offline_reasoning_letters")
    calls = []

    def recorded(completions, **kwargs):
        calls.append((completions, kwargs))
        return task.reward(completions, **kwargs)

    recorded.__name__ = "reasoning"
    model, tokenizer = tiny_chat_lm(["A", "B", "C", "D", "Which", "number", "is", "the", "largest", "Answer", "with", "letter", "10", "20", "30", "40", "50"],
                                    hidden=16, layers=1)  # fmt: skip
    model.train()
    args = trl.GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=4, report_to=[], logging_steps=1, use_cpu=True, save_strategy="no")  # fmt: skip
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[recorded], args=args,
                              train_dataset=task.load("train").select(range(4)), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    completions, kwargs = calls[0]
    assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant"
    assert len(kwargs["answer"]) == len(kwargs["choice_labels"]) == len(completions) == 4
    logged = next(h for h in trainer.state.log_history if "rewards/reasoning/mean" in h)
    expected = task.reward(completions, answer=kwargs["answer"], choice_labels=kwargs["choice_labels"])
    assert logged["rewards/reasoning/mean"] == pytest.approx(sum(expected) / len(expected))
