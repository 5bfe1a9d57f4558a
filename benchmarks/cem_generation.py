"""Memory and time of few-shot CEM's tie-break scoring (``adaptive.cem._log_likelihoods``) on the embedded model.

    python benchmarks/cem_scoring_memory.py [--task offline_code_unseen] [--rows 96] [--new-tokens 48]

The main job's CEM scores ``population x shots`` rows (32 x 3) of few-shot prompts in one forward, each
row under its own adapter. This builds three SVF experts with random vectors on SmolLM2-135M-Instruct,
takes the task's first ``shots`` training prompts, appends ``--new-tokens`` random tokens to each row as its
completion (every row correct: the worst case, where all are scored) and times one scoring call, reporting
the process's peak RSS before and after it. To compare two versions of the code, run it once with each
one's ``src`` first on ``PYTHONPATH``. Prints a table and writes JSON to
``benchmarks/results/cem_scoring_memory.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import torch
from peft import get_peft_model
from results_file import write_results

from peft_svf import SVFConfig
from peft_svf.adaptive import SelfAdaptiveModel
from peft_svf.adaptive.cem import _log_likelihoods
from peft_svf.embedded import load_embedded_model
from peft_svf.prompts import render
from peft_svf.tasks import get_task

RESULTS = Path(__file__).parent / "results" / "cem_scoring_memory.json"
EXPERTS = ("math", "code", "reasoning")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="offline_code_unseen")
    parser.add_argument("--rows", type=int, default=96, help="population x shots (the main job: 32 x 3)")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48, help="completion length of every row")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    model, tokenizer = load_embedded_model()
    torch.manual_seed(0)
    peft_model = get_peft_model(model, SVFConfig(init_noise_std=0.1), adapter_name=EXPERTS[0])
    for i, name in enumerate(EXPERTS[1:], start=1):
        torch.manual_seed(i)
        peft_model.add_adapter(name, SVFConfig(init_noise_std=0.1))
    adaptive_model = SelfAdaptiveModel(peft_model.eval(), tokenizer, list(EXPERTS))
    shots = get_task(args.task).load("train").select(range(args.shots))
    prompts = [tokenizer(render(tokenizer, row["prompt"]), return_tensors="pt", add_special_tokens=False)
               ["input_ids"][0] for row in shots]  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    prompt_ids = [prompts[i % len(prompts)] for i in range(args.rows)]
    generated = [torch.randint(0, len(tokenizer), (args.new_tokens,), generator=generator) for _ in range(args.rows)]
    rows = [EXPERTS[i % len(EXPERTS)] for i in range(args.rows)]
    before = peak_rss_gib()
    start = time.perf_counter()
    with torch.no_grad():
        scores = _log_likelihoods(adaptive_model, prompt_ids, generated, rows, batch_size=None)
    seconds = time.perf_counter() - start
    result = {"task": args.task, "rows": args.rows, "prompt_tokens": max(len(p) for p in prompts),
              "new_tokens": args.new_tokens, "seconds": round(seconds, 2),
              "peak_rss_before_gib": round(before, 2), "peak_rss_after_gib": round(peak_rss_gib(), 2),
              "mean_log_likelihood": sum(s for s, _ in scores) / sum(n for _, n in scores)}  # fmt: skip
    print("| task | rows | prompt tokens | new tokens | seconds | peak RSS before GiB | after GiB | mean log-lik |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {result['task']} | {args.rows} | {result['prompt_tokens']} | {args.new_tokens} | {result['seconds']} | "
          f"{result['peak_rss_before_gib']} | {result['peak_rss_after_gib']} | {result['mean_log_likelihood']:.4f} |")  # fmt: skip
    write_results(RESULTS, args, [result], load_start)


if __name__ == "__main__":
    main()
