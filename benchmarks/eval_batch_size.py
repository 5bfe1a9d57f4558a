"""What the evaluation batch size costs the main job's unseen-task stage, on the embedded SmolLM2-135M-Instruct.

    python benchmarks/eval_batch_size.py [--n 60] [--batch-sizes 16 32 64]

Greedy decoding on a CPU costs per step, not per item, so fewer and larger ``generate`` calls should score the
same items faster; but a larger batch pads more and waits for its longest completion. This times ``evaluate``
of the base model on each unseen task's first ``--n`` test items at each batch size, and counts the items
whose completion differs from the first batch size's (padding changes float rounding, which can flip a greedy
near-tie). Prints a table and writes JSON to ``benchmarks/results/eval_batch_size.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from results_file import print_table, write_results

from peft_svf.embedded import load_embedded_model
from peft_svf.pipeline.config import DEFAULT_UNSEEN_TASKS
from peft_svf.tasks import evaluate, get_task

RESULTS = Path(__file__).parent / "results" / "eval_batch_size.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="test items per task (the main job's unseen_n)")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_UNSEEN_TASKS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # how busy the machine was: a ratio measured beside other jobs is noisier
    model, tokenizer = load_embedded_model()
    model.eval()
    rows = []
    for name in args.tasks:
        task, reference = get_task(name), None
        for size in args.batch_sizes:
            start = time.perf_counter()
            result = evaluate(model, task, tokenizer, n=args.n, batch_size=size, progress=False)
            seconds = time.perf_counter() - start
            completions = [r["completion"] for r in result.records]
            reference = reference or (seconds, completions)
            differ = sum(a != b for a, b in zip(reference[1], completions, strict=True))
            rows.append({"task": name, "n": result.n, "batch_size": size, "seconds": round(seconds, 2),
                         "speedup": round(reference[0] / seconds, 2), "accuracy": result.accuracy,
                         "completions_differ": differ})  # fmt: skip
    first = args.batch_sizes[0]
    header = ["task", "n", "batch", "seconds", f"speed-up over {first}", "accuracy",
              f"completions differing from {first}"]  # fmt: skip
    print_table(header, ([r["task"], r["n"], r["batch_size"], r["seconds"], f"{r['speedup']}x", f"{r['accuracy']:.3f}",
                          r["completions_differ"]] for r in rows))  # fmt: skip
    write_results(RESULTS, args, rows, load_start)


if __name__ == "__main__":
    main()
