"""What stopping a completion where its reward stops reading saves an evaluation, on the embedded SmolLM2-135M.

    python benchmarks/eval_stop_at_answer.py [--n 60] [--batch-size 64] [--rounds 2] [--adapter DIR]

The code tasks' reward reads a completion's first fenced block (``extract_code``), and the model follows that
block with prose up to the token limit. ``evaluate`` stops each row once the block closes
(``tasks.stop_condition``); this times ``evaluate`` on each task's first ``--n`` test items with the task's
reward and with the same reward minus its ``completion_done`` (the whole budget generated), alternating
``--rounds`` times (medians), and compares the rewards item by item: stopping must not change one. The base
model, or an adapter (``--adapter``: an expert's folder). Prints a table and writes JSON to
``benchmarks/results/eval_stop_at_answer.json``.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

from peft import PeftModel
from results_file import alternate, print_table, write_results

from peft_svf.embedded import load_embedded_model
from peft_svf.tasks import evaluate, get_task

RESULTS = Path(__file__).parent / "results" / "eval_stop_at_answer.json"


def reading_everything(reward):
    """The same reward, declaring no point where it stops reading: generation runs to the token limit."""
    return lambda completions, **columns: reward(completions, **columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="test items per task (the main job's unseen_n)")
    parser.add_argument("--tasks", nargs="+", default=["offline_code", "offline_code_unseen"])
    parser.add_argument("--batch-size", type=int, default=64, help="the main job's unseen_batch_size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--adapter", type=Path, default=None, help="evaluate this adapter instead of the base")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # how busy the machine was: a ratio measured beside other jobs is noisier
    model, tokenizer = load_embedded_model()
    if args.adapter is not None:
        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    rows = []
    for name in args.tasks:
        task = get_task(name)
        run = partial(evaluate, model, task, tokenizer, n=args.n, batch_size=args.batch_size, progress=False)
        seconds, results = alternate({"whole": partial(run, reward=reading_everything(task.reward)),
                                      "stopped": partial(run, reward=task.reward)}, args.rounds)  # fmt: skip
        whole, stopped = results["whole"].records, results["stopped"].records
        lengths = {key: sum(len(tokenizer(r["completion"])["input_ids"]) for r in records) / len(records)
                   for key, records in (("whole", whole), ("stopped", stopped))}  # fmt: skip
        rows.append({"task": name, "n": len(whole), "whole_s": round(seconds["whole"], 2),
                     "stopped_s": round(seconds["stopped"], 2), "ratio": round(seconds["stopped"] / seconds["whole"], 3),
                     "tokens_whole": round(lengths["whole"], 1), "tokens_stopped": round(lengths["stopped"], 1),
                     "accuracy": results["stopped"].accuracy,
                     "rewards_differ": sum(a["reward"] != b["reward"] for a, b in zip(whole, stopped, strict=True))})  # fmt: skip
    header = ["task", "n", "whole s", "stopped s", "ratio", "tokens (whole / stopped)", "accuracy", "rewards differing"]
    print_table(header, ([r["task"], r["n"], r["whole_s"], r["stopped_s"], f"{r['ratio']:.3f}",
                          f"{r['tokens_whole']} / {r['tokens_stopped']}", r["accuracy"], r["rewards_differ"]]
                         for r in rows))  # fmt: skip
    write_results(RESULTS, args, rows, load_start)


if __name__ == "__main__":
    main()
