"""``peft-svf push``: upload an expert to the Hugging Face Hub with a model card.

The upload holds the standard PEFT adapter files and a README.md card stating the base model, the SVF
parameterisation and targets, the task and reward, the training arguments and the accuracy against the base
(from the results.json that `peft-svf train` writes next to the adapter), with a usage snippet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import description

NAME = "push"
EXAMPLES = """examples:
  peft-svf push experts/offline_math-svf-seed0/expert me/smollm2-offline-math-svf
  peft-svf push experts/math/expert me/llama3-math-svf --base-model meta-llama/Llama-3.1-8B-Instruct --private

Log in first (`hf auth login`) or pass --token / set HF_TOKEN."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME, help="upload an expert to the Hugging Face Hub", description=description(__doc__),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "expert", type=Path, metavar="EXPERT_DIR", help="adapter folder (adapter_config.json, weights)"
    )
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="Hub repository, e.g. me/smollm2-math-svf (created if missing)"
    )
    parser.add_argument("--results", type=Path, default=None, metavar="FILE",
                        help="results.json for the card (default: next to the adapter or one folder up)")  # fmt: skip
    parser.add_argument("--base-model", default=None,
                        help="Hub id of the base model, for the card and adapter config (default: the adapter's; "
                        "the embedded model's local copy becomes HuggingFaceTB/SmolLM2-135M-Instruct)")  # fmt: skip
    parser.add_argument(
        "--keep-card", action="store_true", help="upload the folder's own README.md unchanged"
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument(
        "--commit-message", default="Upload SVF expert with peft-svf", help="default: %(default)s"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..hub import push_expert_to_hub

    results = json.loads(args.results.read_text()) if args.results else None
    commit = push_expert_to_hub(
        args.expert, args.repo_id, results=results, base_model=args.base_model, private=args.private,
        token=args.token, commit_message=args.commit_message, keep_card=args.keep_card,
    )  # fmt: skip
    print(f"pushed {args.expert} to {args.repo_id}: {commit.commit_url}")
    return 0
