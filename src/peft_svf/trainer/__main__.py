"""``python -m peft_svf.trainer``: an alias of ``peft-svf train``, the one command that trains an expert.

    python -m peft_svf.trainer --task offline_math     # the same as: peft-svf train --task offline_math

Every flag and default is ``peft-svf train``'s (``peft-svf train --help``); there is no second parser.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..cli import main as cli_main
from ..cli.train import NAME


def main(argv: Sequence[str] | None = None) -> int:
    """``peft-svf train ARGV``; returns its exit status."""
    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
