"""The classification expert z_c (strategy B): trained from the experts' tasks, saved, loadable as the classifier."""

from __future__ import annotations

import json

from adaptive_helpers import EXPERTS, WORDS, tiny_experts
from peft_svf.adaptive import SelfAdaptiveModel, train_classification_expert
from tasks_tiny_lm import tiny_chat_lm


def test_train_classification_expert_saves_a_loadable_z_c(tmp_path):
    model, tokenizer = tiny_chat_lm(WORDS)
    tasks = {"math": "offline_math", "code": "offline_code", "reasoning": "offline_reasoning"}
    results = train_classification_expert(model, tokenizer, tasks, tmp_path, steps=2, batch=3, eval_steps=2,
                                          valid_n=3, n_per_task=2, max_new_tokens=6, progress=False)  # fmt: skip
    assert (tmp_path / "expert" / "adapter_config.json").exists()
    assert results["path"] == str(tmp_path / "expert")
    assert results["train_rows"] == 6 and results["valid_rows"] == 3
    assert set(results["valid_accuracy_by_step"]) == {2}
    assert json.loads((tmp_path / "results.json").read_text())["tasks"] == tasks

    experts, _ = tiny_experts()
    experts.save_pretrained(tmp_path / "experts")
    sam = SelfAdaptiveModel.from_pretrained(
        tiny_chat_lm(WORDS)[0], experts={e: tmp_path / "experts" / e for e in EXPERTS}, tokenizer=tokenizer,
        dispatcher="classifier", classifier=results["path"],
    )  # fmt: skip
    decisions = sam.dispatch(["what is two plus three"])
    assert decisions[0].label in [*EXPERTS, "others"]
