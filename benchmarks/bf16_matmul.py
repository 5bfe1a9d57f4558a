"""Whether bf16 matmuls pay on this machine: torch's bf16 against float32 at SmolLM2-135M's shapes.

    python benchmarks/bf16_matmul.py [--repeats 50]

``peft_svf.precision.fast_bf16`` chooses bf16 mixed precision (the code and reasoning experts' training, the main
job's unseen tasks) only where it is faster. On a CPU that depends on AMX, not on AVX512-BF16 alone; this times
the products that dominate a step (16 and 64 rows, as in decoding; 960 rows, as in an update; the output head)
in both dtypes and prints the CPU's bf16 flags beside ``fast_bf16()``. Prints a table and writes JSON to
``benchmarks/results/bf16_matmul.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from results_file import print_table, write_results

from peft_svf.precision import fast_bf16

RESULTS = Path(__file__).parent / "results" / "bf16_matmul.json"
# (rows, in, out): SmolLM2-135M's MLP (576 -> 1536) and output head (576 -> 49152)
SHAPES = [(16, 576, 1536), (64, 576, 1536), (960, 576, 1536), (16, 576, 49152)]


def cpu_bf16_flags() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def seconds_per_product(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    for _ in range(3):  # warm-up: oneDNN picks and caches its kernel on the first calls
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    torch.manual_seed(0)
    flags, fast = cpu_bf16_flags(), fast_bf16()
    rows = []
    for m, k, n in SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        fp32 = seconds_per_product(a, b, args.repeats)
        bf16 = seconds_per_product(a.bfloat16(), b.bfloat16(), args.repeats)
        rows.append({"shape": f"{m}x{k}x{n}", "float32_ms": round(fp32 * 1e3, 3), "bf16_ms": round(bf16 * 1e3, 3),
                     "bf16_speed": round(fp32 / bf16, 2), "cpu_bf16_flags": flags, "fast_bf16": fast})  # fmt: skip
    print(f"CPU bf16 flags: {' '.join(flags) or 'none'}; fast_bf16() = {fast}; "
          f"threads {torch.get_num_threads()}")
    print_table(["rows x in x out", "float32 ms", "bf16 ms", "bf16 speed (float32 = 1)"],
                ([r["shape"], r["float32_ms"], r["bf16_ms"], f"{r['bf16_speed']}x"] for r in rows))
    write_results(RESULTS, args, rows, load_start)


if __name__ == "__main__":
    main()
