"""Time and memory of one few-shot CEM generation (``adaptive.cem.evaluate_population``) on the embedded model.

    python benchmarks/cem_generation.py [--experts outputs/transformer2/experts] [--task offline_code_unseen]

The main job's CEM evaluates 32 mixtures on 3 training prompts of each unseen task per generation: one
greedy ``generate`` over the 96 (member x prompt) rows with per-row adapters, the task's reward, and the
tie-break log-likelihood of the correct rows. This loads the three experts of a main-job folder
(``--experts``; random SVF vectors without it), samples a first CEM generation (the uniform mixture plus
noise of std 0.5, clipped to [0, 1]) and times one ``evaluate_population`` call, reporting the process's peak
RSS before and after. To compare two versions of the code, run it once with each one's ``src`` first on
``PYTHONPATH``. Prints a table and writes JSON to ``benchmarks/results/cem_generation.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from results_file import write_results

from peft_svf import SVFConfig
from peft_svf.adaptive import SelfAdaptiveModel, evaluate_population
from peft_svf.embedded import load_embedded_model
from peft_svf.tasks import get_task

RESULTS = Path(__file__).parent / "results" / "cem_generation.json"
EXPERTS = ("math", "code", "reasoning")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def experts_model(folder: Path | None) -> SelfAdaptiveModel:
    model, tokenizer = load_embedded_model()
    if folder is not None:
        paths = {name: str(folder / name / "expert") for name in EXPERTS}
        return SelfAdaptiveModel.from_pretrained(model, experts=paths, tokenizer=tokenizer)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, SVFConfig(init_noise_std=0.1), adapter_name=EXPERTS[0])
    for i, name in enumerate(EXPERTS[1:], start=1):
        torch.manual_seed(i)
        peft_model.add_adapter(name, SVFConfig(init_noise_std=0.1))
    return SelfAdaptiveModel(peft_model.eval(), tokenizer, list(EXPERTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default=None, help="a main job's experts/ folder")
    parser.add_argument("--task", default="offline_code_unseen")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--shots", type=int, default=3)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    adaptive_model = experts_model(Path(args.experts) if args.experts else None)
    task = get_task(args.task)
    shots = task.load("train").select(range(args.shots))
    rng = np.random.default_rng(0)
    alphas = [dict(zip(EXPERTS, np.clip(1 / 3 + 0.5 * rng.standard_normal(3), 0, 1).tolist(), strict=True))
              for _ in range(args.population)]  # fmt: skip
    before = peak_rss_gib()
    start = time.perf_counter()
    scores = evaluate_population(adaptive_model, alphas, shots, task.reward, max_new_tokens=task.max_new_tokens)
    seconds = time.perf_counter() - start
    tie_breaks = [s.log_likelihood for s in scores if s.log_likelihood is not None]
    result = {"task": args.task, "rows": args.population * args.shots, "new_tokens": task.max_new_tokens,
              "seconds": round(seconds, 2), "peak_rss_before_gib": round(before, 2),
              "peak_rss_after_gib": round(peak_rss_gib(), 2),
              "mean_accuracy": round(float(np.mean([s.accuracy for s in scores])), 4),
              "members_with_tie_break": len(tie_breaks),
              "mean_log_likelihood": float(np.mean(tie_breaks)) if tie_breaks else None}  # fmt: skip
    print("| task | rows | new tokens | seconds | peak RSS before GiB | after GiB | mean accuracy | mean log-lik |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.task} | {result['rows']} | {result['new_tokens']} | {result['seconds']} | "
          f"{result['peak_rss_before_gib']} | {result['peak_rss_after_gib']} | {result['mean_accuracy']} | "
          f"{result['mean_log_likelihood']} |")  # fmt: skip
    write_results(RESULTS, args, [result], load_start)


if __name__ == "__main__":
    main()
