"""What merging an expert for its test evaluation saves, on the embedded SmolLM2-135M-Instruct.

    OMP_NUM_THREADS=1 python benchmarks/expert_test_merged.py [--n 32] [--tasks offline_math offline_code]

``train_expert`` tests a finished expert with its vectors merged into the dense weights
(``merged_for_inference``) instead of SVF's factored forward, when the completions' tokens repay building the
weights (``worth_merging``). This times ``evaluate`` both ways on the same
test items with an adapter of random vectors (``init_noise_std``; speed does not depend on what they
learned), best of ``--rounds``, and counts the items whose completions differ (float rounding of the merged
weight can flip a greedy near-tie). Prints a table and writes JSON to
``benchmarks/results/expert_test_merged.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from peft import get_peft_model
from results_file import print_table, write_results

from peft_svf import SVFConfig
from peft_svf.embedded import load_embedded_model
from peft_svf.svf.merging import merged_for_inference
from peft_svf.tasks import evaluate, get_task

RESULTS = Path(__file__).parent / "results" / "expert_test_merged.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32, help="test items per task")
    parser.add_argument("--tasks", nargs="+", default=["offline_math", "offline_code", "offline_reasoning"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.05, help="init_noise_std of the random vectors")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # how busy the machine was: a ratio measured beside other jobs is noisier
    torch.manual_seed(0)
    model, tokenizer = load_embedded_model()
    model = get_peft_model(model, SVFConfig(init_noise_std=args.noise)).eval()
    rows = []
    for name in args.tasks:
        task = get_task(name)
        unmerged_s, merged_s = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            with torch.no_grad():
                unmerged = evaluate(model, task, tokenizer, n=args.n, progress=False)
            unmerged_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad(), merged_for_inference(model):
                merged = evaluate(model, task, tokenizer, n=args.n, progress=False)
            merged_s.append(time.perf_counter() - start)
        pairs = zip(unmerged.records, merged.records, strict=True)
        differ = sum(a["completion"] != b["completion"] for a, b in pairs)
        rows.append({"task": name, "n": unmerged.n, "unmerged_s": round(min(unmerged_s), 2),
                     "merged_s": round(min(merged_s), 2), "speedup": round(min(unmerged_s) / min(merged_s), 2),
                     "accuracy_unmerged": unmerged.accuracy, "accuracy_merged": merged.accuracy,
                     "completions_differ": differ})  # fmt: skip
    header = ["task", "n", "unmerged s", "merged s", "speed-up", "accuracy unmerged / merged", "completions differing"]
    print_table(header, ([r["task"], r["n"], r["unmerged_s"], r["merged_s"], f"{r['speedup']}x",
                          f"{r['accuracy_unmerged']:.3f} / {r['accuracy_merged']:.3f}", r["completions_differ"]]
                         for r in rows))  # fmt: skip
    write_results(RESULTS, args, rows, load_start)


if __name__ == "__main__":
    main()
