"""``peft-svf adapt``: few-shot adaptation (the paper's strategy C), writing the mixture as a new adapter.

The cross-entropy method searches the weights that mix the experts' vectors for the mixture that answers a
handful of examples best; the result is an ordinary SVF adapter, usable like any expert.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .common import (
    REWARDS,
    add_expert_arguments,
    add_model_arguments,
    chat_prompts,
    description,
    load_model,
    make_reward,
    print_json,
    read_table,
    rewards_help,
    self_adaptive_model,
)

NAME = "adapt"
# flags named as CEMConfig's fields
CEM_FLAGS = ("population_size", "elite_ratio", "generations", "per_layer", "normalize", "batch_size",
             "adapter_name", "seed")  # fmt: skip
EXAMPLES = """examples:
  peft-svf adapt --expert math=experts/math/expert --expert code=experts/code/expert \\
      --expert reasoning=experts/reasoning/expert --data few_shot.jsonl --reward numeric_result \\
      --output-dir experts/few-shot
  peft-svf adapt --expert math=... --expert code=... --data arc_10.jsonl --task arc_challenge --per-layer \\
      --output-dir experts/arc-mix

Writes OUTPUT_DIR/adapter_config.json + adapter_model.safetensors + README.md (load it with PeftModel.from_pretrained,
or use it in `peft-svf eval --adapter`) and OUTPUT_DIR/results.json (alpha, few-shot accuracy, history)."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME, help="few-shot CEM adaptation from a file of examples, writing a new adapter",
        description=description(__doc__), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--data", type=Path, required=True, metavar="FILE",
                        help="few-shot examples: .jsonl, .csv or .parquet with a prompt column and the reward's columns")  # fmt: skip
    scoring = parser.add_mutually_exclusive_group(required=True)
    scoring.add_argument("--reward", choices=list(REWARDS), help=f"built-in reward: {rewards_help()}")
    scoring.add_argument("--task", help="use this built-in task's reward (the file has the task's columns)")
    parser.add_argument(
        "--prompt-column", default="prompt", help="column holding the prompts (default: prompt)"
    )
    parser.add_argument("--raw-prompts", action="store_true",
                        help="feed string prompts as they are instead of as a user chat message")  # fmt: skip
    parser.add_argument("--output-dir", type=Path, required=True, help="where to write the new adapter")
    add_model_arguments(parser)
    add_expert_arguments(parser, required=True, dispatch=False)
    cem = parser.add_argument_group("the cross-entropy method")
    cem.add_argument("--population-size", type=int, default=32, help="mixtures per generation (default: 32)")
    cem.add_argument("--elite-ratio", type=float, default=0.2, help="share kept to refit (default: 0.2)")
    cem.add_argument("--generations", type=int, default=10, help="default: 10")
    cem.add_argument(
        "--per-layer", action="store_true", help="one weight per expert and layer (default: per expert)"
    )
    cem.add_argument("--normalize", action="store_true", help="make each mixture's weights sum to 1")
    cem.add_argument("--max-new-tokens", type=int, default=None, help="completion budget while scoring")
    cem.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default: all)")
    cem.add_argument("--adapter-name", default="few_shot", help="name of the new adapter (default: few_shot)")
    cem.add_argument("--seed", type=int, default=0, help="default: 0")
    cem.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=main)


def cem_config(args: argparse.Namespace) -> Any:
    """The command's CEM flags as a ``CEMConfig`` (the same settings object the Python API takes)."""
    from ..adaptive import CEMConfig

    settings = {name: getattr(args, name) for name in CEM_FLAGS}
    if args.max_new_tokens is not None:
        settings["max_new_tokens"] = args.max_new_tokens
    return CEMConfig(**settings, progress=not args.quiet)


def main(args: argparse.Namespace) -> int:
    from ..hub import write_model_card
    from ..paths import RESULTS_FILE
    from ..tasks import get_task

    data = read_table(args.data, args.prompt_column)
    reward = get_task(args.task).reward if args.task else make_reward(args.reward, data)
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    adaptive_model = self_adaptive_model(args.experts, model, tokenizer)
    config = cem_config(args)
    result = adaptive_model.adapt(chat_prompts(data, tokenizer, args.raw_prompts), reward, config)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.output_dir) as tmp:
        # PEFT saves an adapter not named "default" in a subfolder of its name; the output is the adapter itself
        adaptive_model.model.save_pretrained(tmp, selected_adapters=[result.adapter_name])
        for item in (Path(tmp) / result.adapter_name).iterdir():
            shutil.move(str(item), args.output_dir / item.name)
    summary = {
        "method": "cem", "data": {"few-shot": str(args.data)}, "n_examples": len(data),
        "reward": getattr(reward, "__name__", args.reward), "task": args.task, "experts": dict(args.experts),
        "settings": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("progress", "adapter_name")},
        **result.to_dict(),
    }  # fmt: skip
    (args.output_dir / RESULTS_FILE).write_text(json.dumps(summary, indent=2, default=str))
    write_model_card(args.output_dir, summary)
    print_json({k: summary[k] for k in ("alpha", "score", "adapter_name")})
    print(f"adapter saved to {args.output_dir}, results in {args.output_dir / RESULTS_FILE}")
    return 0
