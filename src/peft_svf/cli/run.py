"""``peft-svf run``: the main job (``peft_svf.pipeline``); its flags pass through (``peft-svf run --help``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

NAME = "run"


def add_parser(commands: argparse._SubParsersAction) -> None:
    # Listed for `peft-svf --help` only: `peft-svf run ...` goes straight to delegate(), so that the main
    # job's own parser sees every flag, --help included.
    commands.add_parser(NAME, help="the main job: train experts, run the self-adaptive strategies, report "
                        "(flags: peft-svf run --help)", add_help=False)  # fmt: skip


def delegate(argv: Sequence[str]) -> int:
    """Run the main job with ``argv``; imported here so the rest of the CLI works without it."""
    try:
        from ..pipeline import main
    except ImportError as exc:
        raise ImportError(f"the main job (peft_svf.pipeline) is not available: {exc}") from exc
    return main(list(argv)) or 0
