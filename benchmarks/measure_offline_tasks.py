"""Measure the embedded model on the offline task suite: greedy accuracy and sampled pass@k per task.

This is how the offline tasks were chosen (training tasks need room: greedy < 70%, pass@8 >= 20%;
unseen tasks must be reachable). Prints a table and writes JSON (per-task numbers, settings and the
greedy completions, for inspection).

    python benchmarks/measure_offline_tasks.py --n 200 --k 8 --out outputs/offline_tasks.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from peft_svf.embedded import load_embedded_model
from peft_svf.tasks import evaluate, get_task, list_tasks, pass_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list_tasks(tag="offline"))
    parser.add_argument("--n", type=int, default=200, help="test items per task")
    parser.add_argument("--k", type=int, default=8, help="samples per item for pass@k")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=50, help="prompts per greedy batch")
    parser.add_argument("--sample-batch-size", type=int, default=8, help="prompts per pass@k batch (x k sequences)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("outputs/offline_tasks.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on a GPU too, as on the CPU
    torch.backends.cudnn.allow_tf32 = False
    model, tokenizer = load_embedded_model()
    model.to(args.device)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(torch=torch.__version__, machine=platform.machine(), processor=platform.processor(),
                    gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.tasks:
        task = get_task(name)
        start = time.perf_counter()
        greedy = evaluate(model, task, tokenizer, n=args.n, batch_size=args.batch_size, progress=False)
        sampled = pass_at_k(model, task, tokenizer, k=args.k, n=args.n, seed=args.seed,
                            batch_size=args.sample_batch_size, progress=False)  # fmt: skip
        row = {"task": name, "domain": task.domain, "tags": list(task.tags), "n": greedy.n,
               "greedy_accuracy": greedy.accuracy, f"pass@{args.k}": sampled,
               "max_new_tokens": task.max_new_tokens, "seconds": round(time.perf_counter() - start, 1),
               "greedy_records": [{"completion": r["completion"], "correct": r["correct"]} for r in greedy.records]}  # fmt: skip
        rows.append(row)
        print(f"{name:26s} {task.domain:9s} n={greedy.n:3d} greedy={greedy.accuracy:6.1%} "
              f"pass@{args.k}={sampled:6.1%} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
        args.out.write_text(json.dumps({"settings": settings, "results": rows}, indent=1))  # after every task
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
