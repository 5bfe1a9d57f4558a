"""Experts of several seeds side by side (issue 14): SVF against LoRA, or one recipe against another.

Reads the ``results.json`` that ``peft-svf train`` / ``train_expert`` wrote in each run folder, groups the
runs by task, and prints per task and group: trainable values, each seed's test accuracy and best
validation, mean ± sd over seeds with the two-level bootstrap 95% CI of the main job's ``--seeds`` report
(``peft_svf.pipeline.aggregate``), the worst seed over the best, and the mean training wall time. Each
later group is also compared with the first: the per-item difference on the same test items, seeds
paired in the order given (independent runs, so any pairing is a fair one), with its CI. Accuracy does not
depend on machine load; the wall times do, so compare them only between runs made side by side.

    python benchmarks/expert_seed_table.py --group SVF runs/svf-*-s[012] --group "LoRA r=16" runs/lora-*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from peft_svf.pipeline.aggregate import expert_items, summarize_cell
from peft_svf.pipeline.report import stat_cell

RESULTS = Path(__file__).parent / "results" / "expert_seed_table.json"


def load_group(folders: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """``{task: [results, ...]}`` in the order given; a folder without a finished run is an error."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise SystemExit(f"{folder}: no results.json (run not finished?)")
        results = json.loads(path.read_text())
        if results.get("expert_test_accuracy") is None:
            raise SystemExit(f"{folder}: the expert was not tested (--test-n 0?)")
        results["folder"] = str(folder)
        by_task.setdefault(results["task"], []).append(results)
    return by_task


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One group on one task: the seeds' accuracies and their bootstrap statistics."""
    items = {i: expert_items(r, "expert") for i, r in enumerate(runs)}
    if len({len(v[0]) for v in items.values()}) != 1:
        raise SystemExit(f"runs tested on different numbers of items: {[r['folder'] for r in runs]}")
    accuracies = [r["expert_test_accuracy"] for r in runs]
    return {
        "runs": [r["folder"] for r in runs],
        "seeds": [r["settings"]["seed"] for r in runs],
        "learning_rate": sorted({r["settings"]["lr"] for r in runs}),
        "trainable_parameters": runs[0]["trainable_parameters"],
        "test_accuracy": accuracies,
        "best_valid_accuracy": [max(r["valid_accuracy_by_step"].values()) for r in runs],
        "cell": summarize_cell({i: v[0] for i, v in items.items()}),
        "rebuilt_items": any(v[1] for v in items.values()),
        "worst_over_best": min(accuracies) / max(accuracies) if max(accuracies) > 0 else None,
        "train_wall_s_mean": float(np.mean([r["train_wall_s"] for r in runs])),
        "items": {i: v[0] for i, v in items.items()},
    }


def paired_difference(group: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any] | None:
    """``group - reference`` per item, seeds paired by position; None when the items cannot be paired."""
    if group["rebuilt_items"] or reference["rebuilt_items"] or len(group["items"]) != len(reference["items"]):
        return None
    diff = {
        i: [a - b for a, b in zip(group["items"][i], reference["items"][i], strict=True)]
        for i in group["items"]
    }
    cell = summarize_cell(diff)
    cell["beyond_noise"] = not cell["ci95"][0] <= 0.0 <= cell["ci95"][1]
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--group", nargs="+", action="append", required=True, metavar=("LABEL", "RUN_DIR"),
        help="a label, then the run folders of that group (repeat for each group; the first is the reference)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    groups = {spec[0]: load_group([Path(p) for p in spec[1:]]) for spec in args.group}
    labels = list(groups)
    tasks = sorted({task for by_task in groups.values() for task in by_task})
    report: dict[str, Any] = {}
    lines = [
        "| task | group | trainable | lr | best valid % per seed | test % per seed | mean ± sd [95% CI] | "
        f"worst/best | vs {labels[0]} (points) | train wall s |",
        "| --- | --- | ---: | --- | --- | --- | --- | ---: | --- | ---: |",
    ]
    for task in tasks:
        report[task] = {}
        for label in labels:
            if task not in groups[label]:
                continue
            summary = summarize_runs(groups[label][task])
            reference = report[task].get(labels[0])
            difference = None if label == labels[0] or reference is None else paired_difference(summary, reference)
            summary["difference_to_reference"] = difference
            report[task][label] = summary
            mark = " *" if difference is not None and difference["beyond_noise"] else ""
            ratio = summary["worst_over_best"]
            lines.append(
                f"| {task} | {label} | {summary['trainable_parameters']:,} | "
                f"{', '.join(f'{lr:g}' for lr in summary['learning_rate'])} | "
                f"{' / '.join(f'{100 * a:.0f}' for a in summary['best_valid_accuracy'])} | "
                f"{' / '.join(f'{100 * a:.0f}' for a in summary['test_accuracy'])} | {stat_cell(summary['cell'])} | "
                f"{'-' if ratio is None else f'{ratio:.2f}'} | "
                f"{'-' if difference is None else stat_cell(difference, signed=True) + mark} | "
                f"{summary['train_wall_s_mean']:.0f} |"
            )
    print("\n".join(lines))
    print("(* the paired difference's 95% CI excludes 0)")
    for by_label in report.values():
        for summary in by_label.values():
            summary.pop("items")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    groups_given = {spec[0]: spec[1:] for spec in args.group}
    args.output.write_text(json.dumps({"groups": groups_given, "tasks": report}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
