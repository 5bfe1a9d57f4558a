"""The main job end to end on the embedded model, at the smallest size that still runs every stage."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from peft import PeftModel

from peft_svf.embedded import load_embedded_model
from peft_svf.pipeline import QUICK, run_pipeline
from peft_svf.pipeline.report import METHOD_ORDER
from peft_svf.tasks import evaluate, get_task
from peft_svf.trainer.recipe import RECIPE_BETAS, TASK_LEARNING_RATES, recipe_candidates, recipe_learning_rate

pytestmark = pytest.mark.embedded

TINY = dict(expert_steps=1, expert_batch=2, expert_eval_steps=1, expert_valid_n=2, expert_test_n=2,
            classifier_steps=1, classifier_batch=3, classifier_eval_steps=1, classifier_valid_n=3,
            unseen_n=3, unseen_batch_size=2, cem_shots=2, cem_population=3, cem_generations=1)  # fmt: skip


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    config = replace(QUICK, output_dir=tmp_path_factory.mktemp("job"), **TINY)
    return config, run_pipeline(config)


def test_report_has_every_method_on_every_unseen_task_and_the_figures(job):
    config, summary = job
    report = config.output_dir / "report"
    assert json.loads((report / "results.json").read_text())["unseen"].keys() == set(config.unseen_tasks)
    for name in ("training_curves.png", "confusion.png", "alphas.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    table = (report / "table2.md").read_text()
    for method in [*METHOD_ORDER, "expert: math", "expert: code", "expert: reasoning"]:
        assert f"| {method} |" in table
    for task in config.unseen_tasks:
        row = summary["unseen"][task]
        assert {*METHOD_ORDER} <= row.keys()
        assert all(score["n"] == config.unseen_n for score in row.values())
        # each dispatcher decided once per test prompt
        assert sum(row["prompt dispatch"]["labels"].values()) == config.unseen_n
    matrix = summary["confusion"]["prompt dispatch"]["matrix"]
    assert [sum(r) for r in matrix] == [config.unseen_n] * len(config.unseen_tasks)


def test_base_and_expert_rows_match_an_independent_evaluation(job):
    config, summary = job
    task = config.task(config.unseen_tasks[0])  # the smoke run's budget (QUICK caps it)
    assert task.max_new_tokens == min(get_task(task.name).max_new_tokens, config.max_new_tokens)
    model, tokenizer = load_embedded_model()
    sizes = dict(n=config.unseen_n, batch_size=config.unseen_batch_size, progress=False)
    base = evaluate(model, task, tokenizer, **sizes)
    row = summary["unseen"][task.name]
    assert (row["base"]["accuracy"], row["base"]["correct_items"]) == (base.accuracy, _items(base))
    expert = evaluate(PeftModel.from_pretrained(model, summary["experts"]["math"]["path"]), task, tokenizer, **sizes)
    assert (row["expert: math"]["accuracy"], row["expert: math"]["correct_items"]) == (expert.accuracy, _items(expert))


def _items(result) -> list[int]:
    return [int(r["correct"]) for r in result.records]


def test_a_second_run_reuses_the_experts_and_reproduces_the_table(job):
    config, summary = job
    adapters = sorted((config.output_dir / "experts").glob("*/expert/adapter_model.safetensors"))
    assert len(adapters) == 4  # three domains and the classifier
    stamps = [a.stat().st_mtime_ns for a in adapters]
    again = run_pipeline(config)
    assert [a.stat().st_mtime_ns for a in adapters] == stamps
    for task in config.unseen_tasks:
        for method in ("base", "prompt dispatch", "classification expert", "soft dispatch", "few-shot CEM"):
            assert again["unseen"][task][method]["accuracy"] == summary["unseen"][task][method]["accuracy"]


def test_each_expert_trains_at_its_tasks_recipe_rate_and_beta(job):
    """``expert_lr=None``, ``expert_beta=None``: each task's validated rate and SVF's KL coefficient, both
    recorded for the reuse check."""
    config, _ = job
    assert config.expert_lr is None and config.expert_beta is None
    rates, betas = {}, {}
    for domain, task_name in config.expert_tasks.items():
        results = json.loads((config.output_dir / "experts" / domain / "results.json").read_text())
        rates[task_name], betas[task_name] = results["settings"]["lr"], results["settings"]["beta"]
        assert results["pipeline_settings"]["lr"] == results["settings"]["lr"]
        assert results["pipeline_settings"]["beta"] == results["settings"]["beta"]
        # TINY trains to the first validation only, where the recipe probes one seed even on offline_code
        assert results["pipeline_settings"]["candidates"] == results["settings"]["candidates"] == recipe_candidates(
            "svf", task_name, steps=config.expert_steps, eval_steps=config.expert_eval_steps) == 1  # fmt: skip
        # Code's rollouts stop at its first closed block and reasoning's after the first number, so an expert of
        # theirs trained before they did is retrained.
        assert results["pipeline_settings"].get("stops_at_answer", False) == (task_name != "offline_math")
        # the smoke run's token cap reaches training, and a job with another cap trains again
        assert results["settings"]["max_new_tokens"] == min(get_task(task_name).max_new_tokens, 24)
        assert results["pipeline_settings"]["max_new_tokens"] == config.max_new_tokens == 24
    assert rates == {task: recipe_learning_rate("svf", task) for task in config.expert_tasks.values()}
    assert rates["offline_math"] == TASK_LEARNING_RATES[("svf", "offline_math")] != rates["offline_code"]
    assert set(betas.values()) == {RECIPE_BETAS["svf"]}
