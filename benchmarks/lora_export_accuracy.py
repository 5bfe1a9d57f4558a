"""Accuracy of SVF experts served as merged weights and as LoRA exports of each rank (issue: serving).

For each expert of the main job on its own task's test items, and for a few-shot CEM mixture on its unseen
task (searched here as the main job does, if the main job stopped before it): greedy accuracy of the SVF
adapter, of ``peft-svf export --merged`` loaded with plain
``AutoModelForCausalLM``, and of ``peft-svf export --lora-rank K`` (and full rank) loaded with
``PeftModel.from_pretrained`` as LoRA, with the share of the change's energy each rank keeps; then the
smallest rank within one point of SVF. Every export goes through the files a server would read. Accuracy
does not depend on machine load, so this may run beside other work. Prints a table, writes JSON and a plot.

    python benchmarks/lora_export_accuracy.py --experts-dir outputs/transformer2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peft_svf.cli.export import export_lora, export_merged
from peft_svf.embedded import load_embedded_model
from peft_svf.svf.merging import merged_for_inference
from peft_svf.tasks import evaluate, get_task

RESULTS = Path(__file__).parent / "results" / "lora_export_accuracy.json"
DOMAINS = ("math", "code", "reasoning")


def accuracy(model: Any, task: str, tokenizer: Any, n: int) -> float:
    return evaluate(model, task, tokenizer, n=n, progress=False).accuracy


def lora_accuracy(base_dir: Path, export_dir: Path, task: str, tokenizer: Any, n: int) -> float:
    """The export as a server loads it (PEFT LoRA), merged for the evaluation's speed (same weights)."""
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = PeftModel.from_pretrained(base, export_dir).eval()
    assert lora.peft_config["default"].peft_type.value == "LORA"
    return accuracy(lora.merge_and_unload(), task, tokenizer, n)


def measure(adapter_dir: Path, task: str, n: int, ranks: list[int], work: Path) -> dict[str, Any]:
    """SVF, merged export and LoRA exports at ``ranks`` and full rank, for one adapter on one task."""
    base, tokenizer = load_embedded_model()
    base_dir = work / "base"
    if not base_dir.exists():
        base.save_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    start = time.time()
    with merged_for_inference(model):  # the SVF adapter at base-model speed, weights put back after
        rows = [{"form": "SVF", "rank": None, "energy": 1.0, "accuracy": accuracy(model, task, tokenizer, n)}]
    for rank in [*ranks, 1.0]:
        export = export_lora(model, "default", rank, work / f"lora-{rank}", max_rank=None)
        rows.append({"form": "LoRA full" if rank == 1.0 else f"LoRA r={rank}", "rank": export.config.r,
                     "energy": export.mean_energy, "min_energy": min(export.energy.values()),
                     "accuracy": lora_accuracy(base_dir, work / f"lora-{rank}", task, tokenizer, n)})  # fmt: skip
    export_merged(model, "default", tokenizer, work / "merged")
    merged = AutoModelForCausalLM.from_pretrained(work / "merged").eval()
    rows.insert(
        1, {"form": "merged", "rank": None, "energy": 1.0, "accuracy": accuracy(merged, task, tokenizer, n)}
    )
    svf = rows[0]["accuracy"]
    within = [r["rank"] for r in rows if r["form"].startswith("LoRA r=") and r["accuracy"] >= svf - 0.01]
    return {"adapter": str(adapter_dir), "task": task, "n": n, "rows": rows,
            "smallest_rank_within_1_point": min(within) if within else None,
            "seconds": round(time.time() - start, 1)}  # fmt: skip


def search_cem_mixture(experts_dir: Path, task_name: str) -> None:
    """The main job's few-shot stage for one unseen task (same shots, CEM settings and seed), for a main job
    stopped before it; writes ``experts_dir/adapters/cem_<task>`` as the main job does."""
    from peft_svf.adaptive import SelfAdaptiveModel
    from peft_svf.pipeline import FULL
    from peft_svf.pipeline.strategies import few_shot_cem

    base, tokenizer = load_embedded_model()
    experts = {d: str(experts_dir / "experts" / d / "expert") for d in DOMAINS}
    adaptive_model = SelfAdaptiveModel.from_pretrained(base, experts=experts, tokenizer=tokenizer)
    found = few_shot_cem(
        replace(FULL, output_dir=experts_dir), adaptive_model, get_task(task_name), tokenizer, None
    )
    print(
        f"CEM on {task_name}: alpha {found['alpha']}, few-shot {found['few_shot_score']}, "
        f"test {found['accuracy']:.3f} ({found['search_seconds']} s search)"
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for result in results:
        lora = [r for r in result["rows"] if r["form"].startswith("LoRA")]
        line = ax.plot([r["rank"] for r in lora], [100 * r["accuracy"] for r in lora], marker="o",
                       label=result["label"])[0]  # fmt: skip
        ax.axhline(100 * result["rows"][0]["accuracy"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank of the export (dotted: the SVF adapter)")
    ax.set_ylabel("accuracy %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts-dir", type=Path, default=Path("outputs/transformer2"),
                        help="the main job's output folder (experts/<domain>/expert, adapters/cem_<task>)")  # fmt: skip
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--test-n", type=int, default=100, help="test items per expert task")
    parser.add_argument("--unseen-n", type=int, default=60, help="test items of the CEM mixture's task")
    parser.add_argument("--cem-task", default="offline_math_unseen", help="whose CEM mixture to export")
    parser.add_argument("--jobs", nargs="+", default=[*DOMAINS, "cem"], choices=[*DOMAINS, "cem"],
                        help="which adapters to measure now; results of others already in --output are kept")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)

    jobs = []
    for domain in [d for d in DOMAINS if d in args.jobs]:
        folder = args.experts_dir / "experts" / domain
        task = json.loads((folder / "results.json").read_text())["task"]
        jobs.append((f"{domain} expert on {task}", folder / "expert", task, args.test_n))
    if "cem" in args.jobs:
        cem = args.experts_dir / "adapters" / f"cem_{args.cem_task}"
        if not cem.exists():
            search_cem_mixture(args.experts_dir, args.cem_task)
        jobs.append((f"CEM mixture on {args.cem_task}", cem, args.cem_task, args.unseen_n))
    previous = json.loads(args.output.read_text())["results"] if args.output.exists() else []
    results = [r for r in previous if r["label"] not in {job[0] for job in jobs}]
    with tempfile.TemporaryDirectory() as tmp:
        for label, adapter, task, n in jobs:
            get_task(task)  # a clear error for an unknown task before any work
            work = Path(tmp) / label.split()[0]
            result = {"label": label, **measure(adapter, task, n, args.ranks, work)}
            results.append(result)
            print(f"\n{label} (n={n}, {result['seconds']} s); smallest rank within 1 point of SVF: "
                  f"{result['smallest_rank_within_1_point']}")  # fmt: skip
            print("| form | r | mean energy | accuracy % |\n| --- | ---: | ---: | ---: |")
            for row in result["rows"]:
                print(
                    f"| {row['form']} | {row['rank'] or '-'} | {row['energy']:.3f} | {100 * row['accuracy']:.1f} |"
                )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"ranks": args.ranks, "results": results}, indent=2))
    plot(results, args.output.with_suffix(".png"))
    print(f"\nwrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
