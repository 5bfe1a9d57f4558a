"""``python -m peft_svf``: the ``peft-svf`` command line."""

from .cli import main

raise SystemExit(main())
