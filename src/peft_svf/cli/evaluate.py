"""``peft-svf eval``: greedy accuracy of the base model, one expert or a self-adaptive strategy on a task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_expert_arguments, add_model_arguments, description, load_model, self_adaptive_model

NAME = "eval"
EXAMPLES = """examples:
  peft-svf eval --task offline_math                                  # the base model
  peft-svf eval --task offline_math --adapter experts/math/expert --compare-base
  peft-svf eval --task offline_math_unseen --expert math=experts/math/expert \\
      --expert code=experts/code/expert --dispatcher prompt           # a self-adaptive strategy
  peft-svf eval --task gsm8k --model meta-llama/Llama-3.1-8B-Instruct --adapter org/llama-math-svf --n 100

Prints "accuracy: A (correct/n)" (a sample is correct when the task's reward is positive); --output writes
the accuracy and every completion with its reward as JSON."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME, help="accuracy of a model, an expert or a strategy on a task", description=description(__doc__),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--task", required=True, help="a built-in task (e.g. offline_math, gsm8k, arc_easy)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"], help="default: test")
    parser.add_argument("--n", type=int, default=200, help="first N items of the split (default: 200)")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="prompts per generation batch (default: 16)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's budget")
    add_model_arguments(parser)
    parser.add_argument(
        "--adapter", default=None, metavar="DIR", help="one expert (adapter folder or Hub id)"
    )
    add_expert_arguments(parser, required=False)
    parser.add_argument("--compare-base", action="store_true",
                        help="also evaluate the base model and print the normalised score (accuracy / base)")  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=None, metavar="FILE", help="write results and completions as JSON"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..tasks import evaluate, get_task

    if args.adapter and args.experts:
        raise ValueError(
            "give either --adapter (one expert) or --expert NAME=DIR (a self-adaptive set), not both"
        )
    task = get_task(args.task)
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    settings = dict(split=args.split, n=args.n, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                    progress=not args.quiet)  # fmt: skip
    base = evaluate(model, task, tokenizer, **settings) if args.compare_base else None
    if args.adapter:
        from peft import PeftModel  # importing peft_svf (this package) registered SVF with PEFT

        model, label = PeftModel.from_pretrained(model, args.adapter).eval(), f"expert {args.adapter}"
    elif args.experts:
        model = self_adaptive_model(args.experts, model, tokenizer, args.dispatcher, args.classifier)
        label = f"self-adaptive ({args.dispatcher}) over {', '.join(name for name, _ in args.experts)}"
    else:
        label = "base model"
    if args.adapter or args.experts or base is None:
        result = evaluate(model, task, tokenizer, base_accuracy=base and base.accuracy, **settings)
    else:
        result = base
    print(f"task {task.name}, split {args.split}, {label}")
    print(f"accuracy: {result.accuracy:.4f} ({result.correct}/{result.n})")
    if base is not None and result is not base:
        score = (
            "n/a (base accuracy 0)" if result.normalized_score is None else f"{result.normalized_score:.3f}"
        )
        print(f"base accuracy: {base.accuracy:.4f} ({base.correct}/{base.n}); normalised score: {score}")
    if args.output:
        summary = {"task": task.name, "split": args.split, "model": args.model or "embedded", "evaluated": label,
                   "accuracy": result.accuracy, "correct": result.correct, "n": result.n,
                   "base_accuracy": base and base.accuracy, "normalized_score": result.normalized_score,
                   "records": result.records}  # fmt: skip
        args.output.write_text(json.dumps(summary, indent=2, default=str))
    return 0
