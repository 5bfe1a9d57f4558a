"""peft-svf: train, adapt, run, evaluate and share Transformer² (SVF) experts from the command line.

examples:
  peft-svf train --task offline_math                 # an expert on the embedded SmolLM2-135M-Instruct
  peft-svf generate --expert math=experts/math/expert "What is 3 + 4?"
  peft-svf eval --task offline_math --adapter experts/math/expert
  peft-svf export --expert math=experts/math/expert --lora-rank 64 --output-dir exports/math-lora
  peft-svf push experts/math/expert me/smollm2-math-svf
  peft-svf run                                       # the main job (peft_svf.pipeline)

Every command runs on the embedded model unless `--model` names a Hugging Face model id or folder. User
errors (a missing file, an unknown task, a bad column) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import adapt, evaluate, export, generate, push, run, train
from .common import Parser, is_user_error, one_line

COMMANDS = (train, adapt, generate, evaluate, export, push, run)


def build_parser() -> Parser:
    """The ``peft-svf`` parser with one subcommand per module of this package."""
    from .. import __version__

    parser = Parser(
        prog="peft-svf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"peft-svf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script passes it to ``sys.exit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [run.NAME]:  # the main job parses its own flags, --help included
        command, call = run.NAME, lambda: run.delegate(argv[1:])
    else:
        args = build_parser().parse_args(argv)
        command, call = args.command, lambda: args.func(args)
    try:
        return call() or 0
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"peft-svf {command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
