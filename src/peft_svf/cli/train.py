"""``peft-svf train``: train an expert with SVFTrainer on a built-in task or a data file, then test it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defaults import ROLLOUT_TEMPERATURE
from .common import (
    REWARDS,
    add_model_arguments,
    chat_prompts,
    description,
    load_model,
    make_reward,
    print_json,
    read_table,
    rewards_help,
)

if TYPE_CHECKING:
    from datasets import Dataset

    from ..tasks import Task
    from ..tasks.rewards import RewardFunc

NAME = "train"
EXAMPLES = """examples:
  peft-svf train --task offline_math
  peft-svf train --task offline_math --adapter lora --output-dir experts/math-lora
  peft-svf train --data train.jsonl --reward numeric --valid-data valid.jsonl --test-data test.jsonl
  peft-svf train --model HuggingFaceTB/SmolLM2-360M-Instruct --task gsm8k --steps 100

The training set is the task's even half (or --data), validation its odd half (or --valid-data), checked
every --eval-steps; the best checkpoint is kept. Base and expert are then tested greedily on the first
--test-n test items (a data file is tested only with --test-data). Writes OUTPUT_DIR/expert (the adapter
and its model card, README.md) and OUTPUT_DIR/results.json."""

# A data file's default generation budget: answers to user prompts are rarely longer (the built-in tasks
# set their own).
DATA_MAX_NEW_TOKENS = 64


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME, help="train an expert on a task or a data file", description=description(__doc__),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--task", help="a built-in task (peft_svf.tasks.list_tasks(), e.g. offline_math, gsm8k)"
    )
    source.add_argument(
        "--data", type=Path, metavar="FILE", help="training prompts: .jsonl, .csv or .parquet"
    )
    data = parser.add_argument_group("data files (with --data)")
    data.add_argument("--reward", choices=list(REWARDS), help=f"built-in reward for --data: {rewards_help()}")
    data.add_argument(
        "--valid-data", type=Path, metavar="FILE", help="validation prompts (default: odd rows of --data)"
    )
    data.add_argument(
        "--test-data", type=Path, metavar="FILE", help="test prompts, for base vs expert accuracy"
    )
    data.add_argument(
        "--prompt-column", default="prompt", help="column holding the prompts (default: prompt)"
    )
    data.add_argument("--raw-prompts", action="store_true",
                      help="feed string prompts as they are instead of as a user chat message")  # fmt: skip
    add_model_arguments(parser, device=False)
    run = parser.add_argument_group("training")
    run.add_argument(
        "--adapter", choices=["svf", "lora"], default="svf", help="SVF (default) or LoRA r=16 on attention"
    )
    run.add_argument("--steps", type=int, default=40, help="optimizer steps (default: 40)")
    run.add_argument("--batch", type=int, default=16, help="prompts per step (default: 16)")
    run.add_argument("--num-generations", type=int, default=1,
                     help="completions sampled per prompt (default: 1)")  # fmt: skip
    run.add_argument("--baseline", choices=["none", "batch_mean", "group_mean", "leave_one_out"],
                     default="batch_mean", help="advantage baseline (default: batch_mean)")  # fmt: skip
    run.add_argument("--candidates", type=int, default=None,
                     help="seeds tried to the first validation; the best one is finished (default: the recipe's for the adapter and task: 3 for SVF on offline_code, else 1)")  # fmt: skip
    run.add_argument("--lr", type=float, default=None,
                     help="learning rate (default: the recipe's for the adapter and task: SVF 1e-2, 5e-3 on offline_math; LoRA 3e-4, 3e-3 on offline_code)")  # fmt: skip
    run.add_argument("--beta", type=float, default=None,
                     help="KL coefficient, the penalty to the base model (default: the recipe's for the adapter: SVF 0.1, LoRA 0)")  # fmt: skip
    run.add_argument("--kl-coef", type=float, default=None, help="deprecated name of --beta")
    run.add_argument("--temperature", type=float, default=ROLLOUT_TEMPERATURE,
                     help=f"rollout sampling temperature (default: {ROLLOUT_TEMPERATURE})")  # fmt: skip
    run.add_argument("--max-new-tokens", type=int, default=None,
                     help=f"completion budget (default: the task's; {DATA_MAX_NEW_TOKENS} for --data)")  # fmt: skip
    run.add_argument(
        "--eval-steps", type=int, default=10, help="validate and checkpoint every N steps (default: 10)"
    )
    run.add_argument("--valid-n", type=int, default=50, help="validation items (default: 50)")
    run.add_argument("--test-n", type=int, default=200, help="test items, 0 to skip testing (default: 200)")
    run.add_argument("--skip-base-eval", action="store_true", help="do not test the base model")
    run.add_argument("--seed", type=int, default=0, help="default: 0")
    run.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                     help="train in bf16 mixed precision (rollouts, updates, validation; the test stays in the "
                     "model's dtype); default: the recipe's choice for the task (offline_code, offline_reasoning) "
                     "where bf16 is faster than float32 (AMX, CUDA; not AVX512-BF16 alone)")
    run.add_argument("--output-dir", type=Path, default=None,
                     help="default: experts/<task>-<adapter>-seed<seed>")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=main)


def _data_files(args: argparse.Namespace) -> dict[str, Path]:
    if args.task is not None:
        stray = [flag for flag, value in (("--reward", args.reward), ("--valid-data", args.valid_data),
                                          ("--test-data", args.test_data)) if value is not None]  # fmt: skip
        if stray:
            raise ValueError(
                f"{', '.join(stray)} go with --data; a built-in task has its own reward and splits"
            )
        return {}
    if args.reward is None:
        raise ValueError("--data needs --reward NAME")
    files = {"train": args.data, "valid": args.valid_data, "test": args.test_data}
    return {split: path for split, path in files.items() if path is not None}


def _data_task(
    args: argparse.Namespace, tables: dict[str, Dataset], reward: RewardFunc, tokenizer: Any
) -> Task:
    """A ``Task`` over the user's files: its training pool is ``--data`` (split even/odd without ``--valid-data``)."""
    from ..tasks import Task

    splits = {split: chat_prompts(data, tokenizer, args.raw_prompts) for split, data in tables.items()}
    return Task(
        name=args.data.stem, domain="custom", loader=lambda split: splits[split],
        reward=reward, description=f"prompts from {args.data}",
        max_new_tokens=DATA_MAX_NEW_TOKENS, splits=tuple(s for s in ("train", "test") if s in splits),
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from ..hub import write_model_card
    from ..paths import EXPERT_DIR, RESULTS_FILE
    from ..tasks import get_task
    from ..trainer.config import resolve_renamed
    from ..trainer.recipe import train_expert

    # Everything a user can get wrong is checked before the model loads.
    beta = resolve_renamed("--kl-coef", args.kl_coef, "--beta", args.beta, None)
    files = _data_files(args)
    tables = {split: read_table(path, args.prompt_column) for split, path in files.items()}
    reward = make_reward(args.reward, *tables.values()) if tables else None
    task = None if tables else get_task(args.task)
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    train_dataset = valid_dataset = None
    if task is None:
        task = _data_task(args, tables, reward, tokenizer)
        if args.valid_data is not None:  # the user's own validation file replaces the odd half of --data
            train_dataset, valid_dataset = task.load("train"), task.loader("valid")
    test_n = args.test_n if "test" in task.splits else 0
    output_dir = args.output_dir or Path(f"experts/{task.name}-{args.adapter}-seed{args.seed}")
    results = train_expert(
        model, tokenizer, task, output_dir, adapter=args.adapter, train_dataset=train_dataset,
        valid_dataset=valid_dataset, steps=args.steps, batch=args.batch,
        num_generations=args.num_generations, advantage_baseline=args.baseline,
        candidates=args.candidates, lr=args.lr, beta=beta,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, eval_steps=args.eval_steps,
        valid_n=args.valid_n, test_n=test_n, seed=args.seed,
        evaluate_base=not args.skip_base_eval, progress=not args.quiet, bf16=args.bf16,
    )  # fmt: skip
    results["reward"] = getattr(task.reward, "__name__", args.reward)
    if files:
        results["data"] = {split: str(path) for split, path in files.items()}
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    write_model_card(output_dir / EXPERT_DIR, results)
    print_json({k: v for k, v in results.items() if k != "log_history"})
    print(
        f"expert saved to {output_dir / EXPERT_DIR} (model card: README.md), results in {output_dir / RESULTS_FILE}"
    )
    return 0
