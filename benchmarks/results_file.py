"""The JSON a benchmark leaves beside its printed table: its settings, its rows and the machine it ran on.

The load average at the start and at the end is kept because a ratio measured beside other jobs is noisier.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def write_results(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]], load_start: float) -> None:
    meta = {"threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)]}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "args": vars(args), "rows": rows}, indent=2, default=str))  # paths as text
    print(f"wrote {path}")


def print_table(header: Sequence[str], lines: Iterable[Sequence[Any]]) -> None:
    """A markdown table to paste into the docs: the first column (a name) left-aligned, the figures right."""
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for cells in lines:
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def alternate(variants: dict[str, Callable[[], T]], rounds: int) -> tuple[dict[str, float], dict[str, T]]:
    """Each variant's median wall time over ``rounds``, run in turn so that machine noise hits them alike, and
    its last result."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, T] = {}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            results[name] = run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in seconds.items()}, results
