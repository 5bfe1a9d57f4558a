"""Where peft-svf keeps its caches (converted embedded model, SVD factors)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$PEFT_SVF_CACHE`` if set, else ``$XDG_CACHE_HOME/peft_svf`` (``~/.cache/peft_svf``)."""
    if os.environ.get("PEFT_SVF_CACHE"):
        return Path(os.environ["PEFT_SVF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "peft_svf"
