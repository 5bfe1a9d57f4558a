"""Train one expert on a registered task and compare it with the base model on the task's test split.

    python -m peft_svf.trainer --task offline_math                   # SVF expert on the embedded SmolLM2
    python -m peft_svf.trainer --task offline_math --adapter lora    # LoRA r=16 on attention, same loop

The train and validation sets are the authors' even/odd split of the task's training pool; the best
checkpoint by validation accuracy is kept (the paper's early stopping). Writes ``results.json`` (base and
expert test accuracy, n, seed, wall time, trainable parameters) and the adapter under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..tasks import get_task
from .recipe import ROLLOUT_TEMPERATURE, train_expert


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--model", default=None, help="model path; default: the embedded SmolLM2-135M-Instruct"
    )
    parser.add_argument("--adapter", choices=["svf", "lora"], default="svf")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--kl-coef", type=float, default=0.0)
    parser.add_argument(
        "--temperature", type=float, default=ROLLOUT_TEMPERATURE, help="rollout sampling temperature"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's budget")
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--valid-n", type=int, default=100)
    parser.add_argument("--test-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-base-eval", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from ..embedded import load_model_or_embedded

    model, tokenizer = load_model_or_embedded(args.model)
    results = train_expert(
        model, tokenizer, get_task(args.task),
        args.output_dir or Path(f"experts/{args.task}-{args.adapter}-seed{args.seed}"),
        adapter=args.adapter, steps=args.steps, batch=args.batch, lr=args.lr, kl_coef=args.kl_coef,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, eval_steps=args.eval_steps, valid_n=args.valid_n,
        test_n=args.test_n, seed=args.seed, evaluate_base=not args.skip_base_eval,
    )  # fmt: skip
    print(
        json.dumps(
            {k: v for k, v in results.items() if k not in ("settings", "log_history")}, indent=2, default=str
        )
    )
    return results


if __name__ == "__main__":
    main()
