"""Cost of the SVD cache's tamper check against what a cache hit saves, and of the weight fingerprint.

For each matrix size (float32, random): the SVD itself, reading the entry, the check that the entry is an
SVD of the weight (``svd_defect``: random probes, O((m + n) r k)), the exact check it replaces (rebuilding
``U diag(S) Vh``, O(m n r)), and the fingerprint with xxh3-128 against hashlib's sha256 and blake2b.
Prints a table (medians of --repeats) and writes JSON.

    python benchmarks/svd_cache_check.py --out benchmarks/results/svd_cache_check.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import load_file

from peft_svf.svf.decomposition import (
    SVDFactors,
    decompose,
    svd_defect,
    svd_tolerance,
    weight_fingerprint,
)


def median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unchecked(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the entry check switched off: what a cache hit cost before the check existed."""

    def run() -> object:
        with mock.patch("peft_svf.svf.decomposition.svd_defect", return_value=None):
            return fn()

    return run


def hashlib_fingerprint(matrix: torch.Tensor, algorithm: str) -> str:
    """The fingerprint's bytes through a hashlib algorithm instead of xxh3 (same input, for comparison)."""
    digest = hashlib.new(algorithm)
    digest.update(f"{tuple(matrix.shape)}|{matrix.dtype}|float32".encode())
    digest.update(matrix.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def measure(shape: tuple[int, int], repeats: int, cache: Path) -> dict[str, float]:
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.02
    start = time.perf_counter()
    factors = decompose(matrix, cache_dir=cache)  # computes and writes the entry
    svd_s = time.perf_counter() - start
    path = cache / f"{weight_fingerprint(matrix, 'float32')}.safetensors"
    w = matrix.double()
    exact = factors.U.double() @ torch.diag(factors.S.double()) @ factors.Vh.double()
    return {
        "svd_and_write_s": svd_s,
        "read_entry_s": median_s(lambda: load_file(path), repeats),
        "probe_check_s": median_s(lambda: svd_defect(matrix, factors, "float32"), repeats),
        "full_reconstruction_check_s": median_s(
            lambda: torch.linalg.norm(matrix - factors.U @ torch.diag(factors.S) @ factors.Vh),
            max(1, repeats // 3),
        ),
        "cache_hit_total_s": median_s(lambda: decompose(matrix, cache_dir=cache), repeats),
        "cache_hit_without_check_s": median_s(unchecked(lambda: decompose(matrix, cache_dir=cache)), repeats),
        "fingerprint_xxh3_128_s": median_s(lambda: weight_fingerprint(matrix, "float32"), repeats),
        "fingerprint_sha256_s": median_s(lambda: hashlib_fingerprint(matrix, "sha256"), repeats),
        "fingerprint_blake2b_s": median_s(lambda: hashlib_fingerprint(matrix, "blake2b"), repeats),
        "reconstruction_error_of_fresh_svd": float(torch.linalg.norm(w - exact) / torch.linalg.norm(w)),
        "tolerance": svd_tolerance(shape, "float32"),
        "check_passes_fresh_svd": svd_defect(matrix, factors, "float32") is None,
        "check_fails_S_times_1.001": svd_defect(
            matrix, SVDFactors(factors.U, factors.S * 1.001, factors.Vh), "float32"
        ) is not None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="*", default=["576x1536", "4096x4096"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/svd_cache_check.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
               "load_before": os.getloadavg(), "rows": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        for text in args.shapes:
            shape = tuple(int(v) for v in text.split("x"))
            results["rows"][text] = measure(shape, args.repeats, Path(cache))
    results["load_after"] = os.getloadavg()
    columns = ["svd_and_write_s", "read_entry_s", "probe_check_s", "full_reconstruction_check_s",
               "cache_hit_total_s", "cache_hit_without_check_s", "fingerprint_xxh3_128_s",
               "fingerprint_sha256_s", "fingerprint_blake2b_s"]  # fmt: skip
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    print(f"{'':>33}" + "".join(f"{name:>12}" for name in results["rows"]))
    for column in columns:
        print(f"{column:>33}" + "".join(f"{row[column] * 1e3:>10.1f}ms" for row in results["rows"].values()))
    for column in ("reconstruction_error_of_fresh_svd", "tolerance"):
        print(f"{column:>33}" + "".join(f"{row[column]:>12.2e}" for row in results["rows"].values()))
    for column in ("check_passes_fresh_svd", "check_fails_S_times_1.001"):
        print(f"{column:>33}" + "".join(f"{row[column]!s:>12}" for row in results["rows"].values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
