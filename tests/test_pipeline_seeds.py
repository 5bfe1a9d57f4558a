"""The main job over several seeds (``--seeds``): the statistics and the driver, on synthetic per-seed summaries
shaped like ``run_pipeline``'s (no model runs here)."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

import peft_svf.pipeline as pipeline
import peft_svf.pipeline.run as run_module
from peft_svf.paths import write_json
from peft_svf.pipeline import QUICK, aggregate_seeds, bootstrap_ci
from peft_svf.pipeline.config import parse_args
from peft_svf.pipeline.report import METHOD_ORDER, confusion, with_best_single_expert, write_report

TASKS = {
    "offline_math_unseen": "math",
    "offline_code_unseen": "code",
    "offline_reasoning_unseen": "reasoning",
}
EXPERTS = {"math": "offline_math", "code": "offline_code", "reasoning": "offline_reasoning"}
DISPATCHERS = ("prompt dispatch", "classification expert", "soft dispatch")
# The chance of a correct answer per method; "expert: code" copies the base model's items exactly.
RATES = {"base": 0.3, "expert: math": 0.5, "expert: reasoning": 0.6, "prompt dispatch": 0.3,
         "classification expert": 0.5, "soft dispatch": 0.4, "few-shot CEM": 0.7}  # fmt: skip
N = 12
SEEDS = (0, 1, 2)


def scored(items: list[int]) -> dict:
    """A cell as strategies._score writes it."""
    return {"accuracy": sum(items) / len(items), "normalized": None, "n": len(items), "seconds": 0.1,
            "correct_items": items}  # fmt: skip


def synthetic_summary(seed: int, n: int = N) -> dict:
    """A per-seed summary with run_pipeline's keys; its numbers depend on ``seed``."""
    rng = random.Random(seed)
    unseen = {}
    for task in TASKS:
        row = {m: scored([int(rng.random() < p) for _ in range(n)]) for m, p in RATES.items()}
        row["expert: code"] = scored(list(row["base"]["correct_items"]))
        for method in DISPATCHERS:
            first = rng.randrange(n + 1)
            row[method]["labels"] = {"math": first, "code": n - first, "reasoning": 0, "others": 0}
            row[method]["mean_alpha"] = {"math": rng.random(), "code": rng.random(), "reasoning": 0.0}
        row["few-shot CEM"]["alpha"] = {d: rng.random() for d in EXPERTS}
        unseen[task] = row
    with_best_single_expert(unseen)
    experts = {}
    for domain, task in EXPERTS.items():
        experts[domain] = {
            "task": task, "domain": domain, "base_test_accuracy": 3 / 10,
            "expert_test_accuracy": rng.randrange(11) / 10, "test_n": 10, "trainable_parameters": 1000,
            "train_wall_s": 1.0,
            "log_history": [{"step": s, "reward": rng.random()} for s in (1, 2)]
            + [{"step": 2, "eval_accuracy": rng.random()}],
        }  # fmt: skip
    return {
        "config": {"seed": seed},
        "experts": experts,
        "classifier": {},
        "unseen": unseen,
        "confusion": {m: confusion(unseen, m, TASKS) for m in DISPATCHERS},
        "seconds": {"total": 1.0},
    }


def reference_ci(items_per_seed: list[list[float]], resamples: int = 2000, rng_seed: int = 0) -> tuple:
    """The documented protocol written out item by item: the same draws, plain loops and a hand-made
    linear percentile."""
    rng = np.random.default_rng(rng_seed)
    n_seeds, n = len(items_per_seed), len(items_per_seed[0])
    seed_draws = rng.integers(0, n_seeds, size=(resamples, n_seeds)).tolist()
    item_draws = rng.integers(0, n, size=(resamples, n_seeds, n)).tolist()
    stats = []
    for b in range(resamples):
        per_seed = [
            statistics.fmean(items_per_seed[seed_draws[b][k]][i] for i in item_draws[b][k])
            for k in range(n_seeds)
        ]
        stats.append(statistics.fmean(per_seed))
    stats.sort()

    def percentile(q: float) -> float:
        position = q * (len(stats) - 1)
        low = math.floor(position)
        high = min(low + 1, len(stats) - 1)
        return stats[low] + (stats[high] - stats[low]) * (position - low)

    return percentile(0.025), percentile(0.975)


@pytest.fixture(scope="module")
def summaries() -> dict[int, dict]:
    return {seed: synthetic_summary(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def aggregated(summaries) -> dict:
    return aggregate_seeds(summaries)


def test_mean_and_sd_over_seeds_match_the_statistics_module(summaries, aggregated):
    assert aggregated["seeds"] == list(SEEDS) and aggregated["n_seeds"] == 3
    for task, row in aggregated["unseen"].items():
        assert row.keys() == summaries[0]["unseen"][task].keys()
        for method, cell in row.items():
            accuracies = [summaries[s]["unseen"][task][method]["accuracy"] for s in SEEDS]
            assert cell["mean"] == pytest.approx(statistics.fmean(accuracies), abs=1e-12)
            assert cell["sd"] == pytest.approx(statistics.stdev(accuracies), abs=1e-12)
            assert cell["per_seed"] == {
                str(s): pytest.approx(a) for s, a in zip(SEEDS, accuracies, strict=True)
            }
            assert (cell["n_items"], cell["n_seeds"]) == (N, 3)
    # the seeds differ, so the synthetic data does exercise sd > 0
    assert aggregated["unseen"]["offline_math_unseen"]["few-shot CEM"]["sd"] > 0


def test_paired_differences_to_the_base_model(summaries, aggregated):
    for task, row in aggregated["minus_base"].items():
        assert "base" not in row
        for method, cell in row.items():
            diffs = [summaries[s]["unseen"][task][method]["accuracy"] - summaries[s]["unseen"][task]["base"]["accuracy"]
                     for s in SEEDS]  # fmt: skip
            assert cell["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
            low, high = cell["ci95"]
            assert cell["beyond_noise"] == (not low <= 0 <= high)
        # the code expert answers exactly as the base model: a zero difference, never beyond noise
        assert row["expert: code"]["ci95"] == [0.0, 0.0] and row["expert: code"]["beyond_noise"] is False


def test_ci_bounds_match_an_independent_bootstrap(summaries, aggregated):
    for task in ("offline_math_unseen", "offline_reasoning_unseen"):
        for method in ("base", "few-shot CEM", "soft dispatch"):
            items = [summaries[s]["unseen"][task][method]["correct_items"] for s in SEEDS]
            expected = reference_ci(items)
            assert aggregated["unseen"][task][method]["ci95"] == pytest.approx(expected, abs=1e-12)
            assert bootstrap_ci(items) == pytest.approx(expected, abs=1e-12)
        base = [summaries[s]["unseen"][task]["base"]["correct_items"] for s in SEEDS]
        cem = [summaries[s]["unseen"][task]["few-shot CEM"]["correct_items"] for s in SEEDS]
        paired = [[a - b for a, b in zip(c, b_, strict=True)] for c, b_ in zip(cem, base, strict=True)]
        assert aggregated["minus_base"][task]["few-shot CEM"]["ci95"] == pytest.approx(reference_ci(paired))
    # another RNG seed gives other bounds: the CI comes from resampling, not from a formula
    items = [summaries[s]["unseen"]["offline_math_unseen"]["few-shot CEM"]["correct_items"] for s in SEEDS]
    assert bootstrap_ci(items, rng_seed=1) == pytest.approx(reference_ci(items, rng_seed=1), abs=1e-12)


def test_every_ci_contains_its_mean_and_is_not_degenerate(aggregated):
    widths = []
    for table in (aggregated["unseen"], aggregated["minus_base"]):
        for row in table.values():
            for cell in row.values():
                low, high = cell["ci95"]
                assert low <= cell["mean"] <= high
                widths.append(high - low)
    assert max(widths) > 0.1  # 12 noisy items per seed: wide intervals


def test_all_equal_items_give_a_zero_width_ci():
    cell = aggregate_seeds({s: _constant(s, 1) for s in SEEDS})["unseen"]["offline_math_unseen"]["base"]
    assert cell["ci95"] == [1.0, 1.0] and cell["mean"] == 1.0 and cell["sd"] == 0.0
    assert bootstrap_ci([[0] * 7, [0] * 7]) == (0.0, 0.0)


def test_the_seeds_are_resampled_not_only_the_items():
    """Each seed's items are all equal, so only the seed level varies: a seed with 0%, two with 100%. The
    resampled statistic is 0, 1/3, 2/3 or 1 (P(0) = 1/27 > 2.5%, P(1) = 8/27)."""
    items = [[0] * N, [1] * N, [1] * N]
    assert bootstrap_ci(items) == (0.0, 1.0)
    assert bootstrap_ci([[0] * N]) == (0.0, 0.0)  # one seed: the item level alone


def test_bootstrap_refuses_seeds_scored_on_different_items():
    with pytest.raises(ValueError, match="same, non-zero number of items"):
        bootstrap_ci([[1, 0, 1], [1, 0]])
    broken = synthetic_summary(0)
    broken["unseen"]["offline_math_unseen"]["base"]["accuracy"] = 0.99
    with pytest.raises(ValueError, match="disagree"):
        aggregate_seeds({0: broken, 1: synthetic_summary(1)})


def test_experts_own_task_table(summaries, aggregated):
    for domain, entry in aggregated["experts"].items():
        accuracies = [summaries[s]["experts"][domain]["expert_test_accuracy"] for s in SEEDS]
        assert entry["task"] == EXPERTS[domain]
        assert entry["expert"]["mean"] == pytest.approx(statistics.fmean(accuracies), abs=1e-12)
        assert entry["expert"]["sd"] == pytest.approx(statistics.stdev(accuracies), abs=1e-12)
        # the base model scores 3 of 10 in every seed: no spread over seeds, only over the items
        assert entry["base"]["mean"] == pytest.approx(0.3) and entry["base"]["sd"] == 0.0
        assert entry["base"]["ci95"][0] < 0.3 < entry["base"]["ci95"][1]
        assert entry["expert"]["n_items"] == 10 and entry["rebuilt_items"] is True
    # per-item lists, where the results hold them, are used as they are
    with_items = {s: synthetic_summary(s) for s in SEEDS}
    lists = {s: [1, 1, 0, 0, 0, 0, 0, 0, 0, 1 - s % 2] for s in SEEDS}
    for s in SEEDS:
        with_items[s]["experts"]["math"].update(
            expert_test_items=lists[s], expert_test_accuracy=sum(lists[s]) / 10
        )
    entry = aggregate_seeds(with_items)["experts"]["math"]
    assert entry["expert"]["ci95"] == pytest.approx(reference_ci(list(lists.values())), abs=1e-12)
    assert entry["expert"]["per_seed"] == {"0": 0.3, "1": 0.2, "2": 0.3}


def _constant(seed: int, value: int) -> dict:
    summary = synthetic_summary(seed)
    for row in summary["unseen"].values():
        for cell in row.values():
            cell.update(correct_items=[value] * N, accuracy=float(value))
    return summary


def test_seeds_flag_parses_and_single_seed_config_is_unchanged():
    assert parse_args(["--seeds", "0", "1", "2"]).seeds == (0, 1, 2)
    single = parse_args(["--seed", "3"])
    assert (single.seed, single.seeds) == (3, ())
    assert "seeds" not in parse_args([]).to_dict()  # a single-seed results.json keeps its keys
    assert parse_args(["--seeds", "4", "5"]).to_dict()["seeds"] == (4, 5)
    for argv in (["--seed", "1", "--seeds", "0", "1"], ["--seeds", "0", "0"], ["--seeds"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_main_runs_one_job_per_seed_and_writes_the_aggregated_report(monkeypatch, tmp_path):
    calls = []

    def fake_run_pipeline(config):
        calls.append(config)
        return synthetic_summary(config.seed)

    monkeypatch.setattr(run_module, "run_pipeline", fake_run_pipeline)
    assert pipeline.main(["--quick", "--seeds", "0", "1", "2", "--output-dir", str(tmp_path)]) == 0
    assert [(c.seed, c.output_dir, c.seeds) for c in calls] == [
        (s, tmp_path / f"seed-{s}", ()) for s in SEEDS
    ]
    assert all(c.unseen_n == QUICK.unseen_n and c.expert_steps == QUICK.expert_steps for c in calls)

    report = tmp_path / "report"
    table = (report / "table2.md").read_text()
    for name in [*METHOD_ORDER, "expert: math", "expert: code", "expert: reasoning"]:
        assert f"| {name} |" in table, name
    for task in TASKS:
        assert f"{task} (n={N})" in table
    assert "n_seeds=3 seeds (0, 1, 2)" in table
    for domain in EXPERTS:
        assert f"| {domain} | {EXPERTS[domain]} | 10 |" in table

    results = json.loads((report / "results.json").read_text())
    assert results["seeds"] == [0, 1, 2] and results["n_seeds"] == 3
    assert results["config"]["seeds"] == [0, 1, 2]
    cell = results["unseen"]["offline_code_unseen"]["soft dispatch"]
    assert cell["per_seed"] == {str(s): synthetic_summary(s)["unseen"]["offline_code_unseen"]["soft dispatch"]
                                ["accuracy"] for s in SEEDS}  # fmt: skip
    assert cell["n_items"] == N
    # the confusion counts are summed over the seeds: 3 x N prompts per task
    assert [sum(row) for row in results["confusion"]["prompt dispatch"]["matrix"]] == [3 * N] * len(TASKS)
    for name in ("accuracy.png", "training_curves.png", "confusion.png", "alphas.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG", name
    assert results["per_seed"]["1"]["report"] == str(tmp_path / "seed-1" / "report")


def test_main_without_seeds_runs_one_job_as_before(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(run_module, "run_pipeline", lambda config: calls.append(config) or {})
    monkeypatch.setattr(run_module, "run_seeds", lambda config: pytest.fail("run_seeds on a single seed"))
    assert pipeline.main(["--quick", "--seed", "2", "--output-dir", str(tmp_path)]) == 0
    assert [(c.seed, c.seeds, c.output_dir) for c in calls] == [(2, (), tmp_path)]
    assert not (tmp_path / "report").exists()


def test_run_seeds_needs_seeds():
    with pytest.raises(ValueError, match=r"needs config\.seeds"):
        run_module.run_seeds(QUICK)


def _finish_seed(config, seed: int) -> dict:
    """Seed ``seed`` of ``config`` as a finished job leaves it: its report, results.json with its config."""
    one = run_module.seed_config(config, seed)
    summary = {**synthetic_summary(seed), "config": one.to_dict()}
    write_report(one.output_dir / "report", summary)
    return summary


def test_a_stopped_multi_seed_run_resumes_at_the_first_unfinished_seed(monkeypatch, tmp_path):
    config = replace(QUICK, seeds=SEEDS, output_dir=tmp_path)
    for seed in (0, 1):
        _finish_seed(config, seed)
    # seed 2 was stopped mid-job: its report folder holds table2.md but not the results.json written last
    (tmp_path / "seed-2" / "report").mkdir(parents=True)
    (tmp_path / "seed-2" / "report" / "table2.md").write_text("partial")
    calls = []

    def fake_run_pipeline(one):
        calls.append(one.seed)
        return {**synthetic_summary(one.seed), "config": one.to_dict()}

    monkeypatch.setattr(run_module, "run_pipeline", fake_run_pipeline)
    results = run_module.run_seeds(config)
    assert calls == [2]
    in_memory = {s: {**synthetic_summary(s), "config": run_module.seed_config(config, s).to_dict()} for s in SEEDS}
    expected = json.loads(json.dumps(aggregate_seeds(in_memory)))
    for key in ("unseen", "minus_base", "experts"):
        assert json.loads(json.dumps(results[key])) == expected[key], key


def test_a_seed_finished_with_other_settings_is_run_again(monkeypatch, tmp_path):
    config = replace(QUICK, seeds=(0,), output_dir=tmp_path)
    _finish_seed(replace(config, expert_steps=config.expert_steps + 1), 0)
    calls = []
    monkeypatch.setattr(run_module, "run_pipeline", lambda one: calls.append(one.seed) or synthetic_summary(0))
    run_module.run_seeds(config)
    assert calls == [0]
    # a finished seed moved to another folder is still the same job
    moved = replace(config, output_dir=tmp_path / "moved")
    _finish_seed(config, 0)
    (tmp_path / "seed-0").rename(tmp_path / "moved-seed-0")
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved-seed-0").rename(tmp_path / "moved" / "seed-0")
    run_module.run_seeds(moved)
    assert calls == [0]


WRITER = """
import sys
from pathlib import Path
from peft_svf.paths import write_json
path, n = Path(sys.argv[1]), 0
while True:
    n += 1
    write_json(path, {"text": str(n % 10) * 10_000_000})
"""


def test_a_job_killed_while_writing_json_leaves_a_whole_file(tmp_path):
    """A writer rewrites a 10 MB file in a loop and is killed (SIGKILL) the moment the file is seen other than
    whole, or after 2 s: what it leaves must be one whole version. A plain write_text fails this at once."""
    path = tmp_path / "results.json"
    whole = len(json.dumps({"text": "0" * 10_000_000}, indent=2))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        while not path.exists():
            time.sleep(0.001)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and path.stat().st_size == whole:
            pass
    finally:
        writer.kill()
        writer.wait()
    text = json.loads(path.read_text())["text"]
    assert len(text) == 10_000_000 and len(set(text)) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")] == ["results.json"]


def test_write_json_cleans_up_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json(path, {"accuracy": 0.5})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"accuracy": 0.7})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
