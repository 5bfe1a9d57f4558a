"""What running a batch's common prompt prefix once saves an evaluation, on the embedded SmolLM2-135M-Instruct.

    python benchmarks/eval_prefix_sharing.py [--n 60] [--batch-size 64] [--rounds 2]

Chat prompts repeat the template's system text (24-41 tokens of the offline tasks' 49-85) in every row.
``evaluate(share_prompt_prefix=True)`` runs those tokens once and lets every row read their KV cache; this
times ``evaluate`` of the base model on each task's first ``--n`` test items with and without, alternating
``--rounds`` times (medians), and counts the items whose completion differs (exact in maths; float rounding
can flip a greedy near-tie). Prints a table and writes JSON to ``benchmarks/results/eval_prefix_sharing.json``.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

from results_file import alternate, print_table, write_results

from peft_svf.embedded import load_embedded_model
from peft_svf.pipeline.config import DEFAULT_EXPERT_TASKS, DEFAULT_UNSEEN_TASKS
from peft_svf.tasks import evaluate, get_task

RESULTS = Path(__file__).parent / "results" / "eval_prefix_sharing.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="test items per task (the main job's unseen_n)")
    parser.add_argument("--tasks", nargs="+", default=[*DEFAULT_UNSEEN_TASKS, *DEFAULT_EXPERT_TASKS.values()])
    parser.add_argument("--batch-size", type=int, default=64, help="the main job's unseen_batch_size")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # how busy the machine was: a ratio measured beside other jobs is noisier
    model, tokenizer = load_embedded_model()
    model.eval()
    rows = []
    for name in args.tasks:
        task = get_task(name)
        seconds, results = alternate({share: partial(evaluate, model, task, tokenizer, n=args.n, progress=False,
                                                     batch_size=args.batch_size, share_prompt_prefix=share)
                                      for share in (False, True)}, args.rounds)  # fmt: skip
        plain, shared = seconds[False], seconds[True]
        differ = sum(a["completion"] != b["completion"]
                     for a, b in zip(results[False].records, results[True].records, strict=True))  # fmt: skip
        rows.append({"task": name, "n": results[True].n, "plain_s": round(plain, 2), "shared_s": round(shared, 2),
                     "ratio": round(shared / plain, 3), "accuracy_plain": results[False].accuracy,
                     "accuracy_shared": results[True].accuracy, "completions_differ": differ})  # fmt: skip
    header = ["task", "n", "whole prompts s", "shared prefix s", "ratio", "accuracy (whole / shared)",
              "completions differing"]  # fmt: skip
    print_table(header, ([r["task"], r["n"], r["plain_s"], r["shared_s"], f"{r['ratio']:.3f}",
                          f"{r['accuracy_plain']:.3f} / {r['accuracy_shared']:.3f}", r["completions_differ"]]
                         for r in rows))  # fmt: skip
    write_results(RESULTS, args, rows, load_start)


if __name__ == "__main__":
    main()
