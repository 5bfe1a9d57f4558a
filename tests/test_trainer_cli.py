"""``python -m peft_svf.trainer``: train an expert on a registered task and compare it with the base model."""

from __future__ import annotations

import json

from datasets import Dataset

from peft_svf.tasks import Task, register_task
from peft_svf.trainer.__main__ import main
from test_trainer_fixtures import prompts, starts_with, tiny_llama, tiny_tokenizer


def _toy_split(split: str) -> Dataset:
    return Dataset.from_dict({"prompt": prompts(64 if split == "train" else 32, seed=0 if split == "train" else 1)})


def test_cli_trains_an_expert_and_reports_base_and_expert_accuracy(tmp_path):
    register_task(
        Task(name="toy_starts_with_e", domain="toy", loader=_toy_split, reward=starts_with, max_new_tokens=4),
        overwrite=True,
    )
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    output = tmp_path / "expert"
    results = main(
        ["--task", "toy_starts_with_e", "--model", str(tmp_path / "model"), "--steps", "20", "--lr", "0.3",
         "--eval-steps", "10", "--valid-n", "16", "--test-n", "32", "--output-dir", str(output)]
    )  # fmt: skip
    assert (
        json.loads((output / "results.json").read_text())["expert_test_accuracy"]
        == results["expert_test_accuracy"]
    )
    assert results["test_n"] == 32 and results["trainable_parameters"] > 0
    assert results["expert_test_accuracy"] >= results["base_test_accuracy"] + 0.3, results
    assert set(results["valid_accuracy_by_step"]) == {10, 20}
    assert (output / "expert" / "adapter_config.json").exists()
