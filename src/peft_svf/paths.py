"""Where peft-svf keeps things on disk: its caches (converted embedded model, SVD factors) and an expert's folder.

No imports beyond the standard library, so readers of a trained expert's folder (the Hub card, the CLI) need
not load the trainer that wrote it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# A trained expert's folder: the adapter in EXPERT_DIR, what it was trained on and how well it did in RESULTS_FILE.
RESULTS_FILE = "results.json"
EXPERT_DIR = "expert"


def default_cache_dir() -> Path:
    """``$PEFT_SVF_CACHE`` if set, else ``$XDG_CACHE_HOME/peft_svf`` (``~/.cache/peft_svf``)."""
    if os.environ.get("PEFT_SVF_CACHE"):
        return Path(os.environ["PEFT_SVF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "peft_svf"


def as_stored(data: Any) -> Any:
    """``data`` as :func:`write_json` stores it (tuples become lists, paths strings): settings kept in memory
    compare equal to those read back from a results file only in this form."""
    return json.loads(json.dumps(data, default=str))


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON through a temporary file and a rename: a job killed while writing leaves the old file
    or none, never a truncated one, which a rerun (it reuses finished stages by reading these files) would
    fail on."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(temp, path)  # atomic on POSIX and Windows
    finally:
        temp.unlink(missing_ok=True)
