"""The classification expert z_c (strategy B): trained from the experts' tasks, saved, loadable as the classifier."""

from __future__ import annotations

import json
import re

import torch

from adaptive_helpers import EXPERTS, WORDS, tiny_experts
from peft_svf.adaptive import SelfAdaptiveModel, SoftPromptDispatcher, train_classification_expert
from peft_svf.adaptive.dispatch import ASSISTANT_PREFIX, CLASSIFIER_ADAPTER
from peft_svf.tasks.classification import TASK_IDENTIFICATION, classification_prompt
from peft_svf.trainer.recipe import CANDIDATE_SEED_STRIDE, TASK_CANDIDATES
from tasks_tiny_lm import tiny_chat_lm

QUESTIONS = ["what is two plus three", "write a function", "which letter is the largest", "the answer",
             "two plus two", "write the answer", "what is the largest letter", "a function plus a function"]  # fmt: skip


def _prompt_ids(tokenizer, question: str) -> list[int]:
    """Pass 1's prompt, rendered here with the chat template itself."""
    text = tokenizer.apply_chat_template(classification_prompt(question, EXPERTS), tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _greedy_answer(model, tokenizer, question: str, max_new_tokens: int) -> str:
    """A plain greedy loop after the prefilled ``ASSISTANT_PREFIX``, one full forward per token, stopping at
    EOS or once the box has closed; returns the answer with its prefix."""
    ids = _prompt_ids(tokenizer, question) + tokenizer(ASSISTANT_PREFIX, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
        new.append(token)
        text = ASSISTANT_PREFIX + tokenizer.decode(new, skip_special_tokens=True)
        if token == tokenizer.eos_token_id or re.search(r"\\boxed\{[^{}]*\}", text):
            break
    return ASSISTANT_PREFIX + tokenizer.decode(new, skip_special_tokens=True)


def _boxed_label(text: str) -> str:
    """The expert named in the first closed box, else "others" (the base weights)."""
    found = re.search(r"\\boxed\{([^{}]*)\}", text)
    label = found.group(1).strip().lower() if found else None
    return label if label in EXPERTS else "others"


@torch.no_grad()
def _label_argmax(model, tokenizer, question: str) -> str:
    """The label whose first token is likeliest after ``Classification: \\boxed{`` (one full forward)."""
    ids = (
        _prompt_ids(tokenizer, question) + tokenizer(ASSISTANT_PREFIX, add_special_tokens=False)["input_ids"]
    )
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    labels = [*EXPERTS, "others"]
    first = [
        tokenizer(ASSISTANT_PREFIX + label, add_special_tokens=False)["input_ids"][-1] for label in labels
    ]
    return labels[int(logits[first].argmax())]


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
    adaptive_model = SelfAdaptiveModel.from_pretrained(
        tiny_chat_lm(WORDS)[0], experts={e: tmp_path / "experts" / e for e in EXPERTS}, tokenizer=tokenizer,
        dispatcher="classifier", classifier=results["path"],
    )  # fmt: skip
    decisions = adaptive_model.dispatch(QUESTIONS)
    soft = SoftPromptDispatcher(adapter_name=CLASSIFIER_ADAPTER).bind(adaptive_model).dispatch(QUESTIONS)
    # the same answers from the plain model: with z_c active, and (to show that z_c decides) with none
    adaptive_model.model.set_adapter(CLASSIFIER_ADAPTER)
    with_z_c = [_greedy_answer(adaptive_model.model, tokenizer, q, max_new_tokens=32) for q in QUESTIONS]
    argmax_z_c = [_label_argmax(adaptive_model.model, tokenizer, q) for q in QUESTIONS]
    with adaptive_model.model.disable_adapter():
        without = [_greedy_answer(adaptive_model.model, tokenizer, q, max_new_tokens=32) for q in QUESTIONS]
        argmax_base = [_label_argmax(adaptive_model.model, tokenizer, q) for q in QUESTIONS]
    assert (
        with_z_c != without and argmax_z_c != argmax_base and len(set(argmax_z_c)) > 1
    )  # the check can fail
    assert [d.text for d in decisions] == with_z_c
    assert [d.label for d in decisions] == [_boxed_label(text) for text in with_z_c]
    assert all(d.base == (1.0 if d.label == "others" else 0.0) for d in decisions)
    assert [d.label for d in soft] == argmax_z_c


def test_z_c_probes_the_recipes_seeds_and_finishes_the_best(tmp_path):
    """Most single z_c runs lock into one label for every question (docs/trainer.md): by default the recipe
    probes ``TASK_CANDIDATES``' count of seeds to the first validation, and ``candidates=1`` trains one."""
    tasks = {"math": "offline_math", "code": "offline_code", "reasoning": "offline_reasoning"}
    settings = dict(steps=4, batch=3, eval_steps=2, valid_n=3, n_per_task=2, max_new_tokens=6, seed=5, progress=False)
    probed = train_classification_expert(*tiny_chat_lm(WORDS), tasks, tmp_path / "probed", **settings)
    count = TASK_CANDIDATES[("svf", TASK_IDENTIFICATION)]
    assert count > 1 and probed["settings"]["candidates"] == count
    assert probed["settings"]["assistant_prefix"] == ASSISTANT_PREFIX  # z_c's answers start prefilled
    seeds = [5 + k * CANDIDATE_SEED_STRIDE for k in range(count)]
    assert [probe["seed"] for probe in probed["candidates"]] == seeds
    best = max(probe["valid_accuracy"] for probe in probed["candidates"])  # the first probe that reached it wins
    assert probed["chosen_seed"] == next(p["seed"] for p in probed["candidates"] if p["valid_accuracy"] == best)
    assert (tmp_path / "probed" / "expert" / "adapter_config.json").exists()
    single = train_classification_expert(*tiny_chat_lm(WORDS), tasks, tmp_path / "single", candidates=1, **settings)
    assert single["settings"]["candidates"] == 1 and "candidates" not in single
