"""Programs per second through the sandbox, before (a git revision) and after (the working tree), in one run.

Code experts run every rollout through ``run_program``/``run_programs``, so the isolation layers
must not cost much. The old sandbox is materialised from git (``git show REV:...``) into a
temporary package, never by changing the working tree. Rounds alternate old/new so that the
(shared, busy) machine's load hits both alike; the table gives medians and the load average.

    python benchmarks/sandbox_throughput.py [--ref REV] [--rounds 5] [--programs 24]

Writes benchmarks/results/sandbox_throughput.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILES = ("sandbox.py", "_sandbox_child.py")
# A typical MBPP-style program: a small function, an import, three asserts.
PROGRAM = '''import re
def remove_occ(s, ch):
    first = s.find(ch)
    last = s.rfind(ch)
    if first == -1:
        return s
    return s[:first] + s[first + 1:last] + s[last + 1:] if first != last else s[:first] + s[first + 1:]
def count_words(text):
    return len(re.findall(r"\\w+", text))
assert remove_occ("hello", "l") == "heo"
assert remove_occ("abcda", "a") == "bcd"
assert count_words("a quick brown fox") == 4
'''


def _default_ref() -> str:
    """The revision before the OS-isolation layers arrived (the commit that added sandbox_syscalls.py)."""
    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "src/peft_svf/tasks/sandbox_syscalls.py"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return f"{out[-1]}~1" if out else "HEAD"


def _load_ref(ref: str, directory: Path):
    package = directory / "peft_svf_sandbox_ref"
    package.mkdir()
    for name in FILES:
        text = subprocess.run(["git", "show", f"{ref}:src/peft_svf/tasks/{name}"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        (package / name).write_text(text)
    (package / "__init__.py").write_text("")
    return _load("peft_svf_sandbox_ref", package / "sandbox.py")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses looks its module up
    spec.loader.exec_module(module)
    return module


def _rate(module, n: int, batch: bool) -> float:
    limits = module.SandboxLimits()
    start = time.perf_counter()
    if batch:
        results = module.run_programs([PROGRAM] * n, limits)
    else:
        results = [module.run_program(PROGRAM, limits) for _ in range(n)]
    elapsed = time.perf_counter() - start
    assert all(r.passed for r in results), results[0]
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default=None, help="git revision of the 'before' sandbox (default: before the layers)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--programs", type=int, default=24, help="programs per round and mode")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/sandbox_throughput.json"))
    args = parser.parse_args()
    ref = args.ref or _default_ref()
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"before": _load_ref(ref, Path(tmp)), "after": _load("peft_svf_sandbox_new", REPO / "src/peft_svf/tasks/sandbox.py")}
        layers = versions["after"].run_program(PROGRAM).layers
        load_before = os.getloadavg()
        rates: dict[str, dict[str, list[float]]] = {v: {"sequential": [], "run_programs": []} for v in versions}
        for _ in range(args.rounds):
            for mode in ("sequential", "run_programs"):
                for version, module in versions.items():
                    rates[version][mode].append(_rate(module, args.programs, mode == "run_programs"))
        load_after = os.getloadavg()
    median = {v: {m: statistics.median(r) for m, r in modes.items()} for v, modes in rates.items()}
    ratio = {m: median["before"][m] / median["after"][m] for m in ("sequential", "run_programs")}
    print(f"ref {ref}; layers after: {', '.join(layers)}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    print(f"{'mode':<14}{'before prog/s':>15}{'after prog/s':>14}{'cost after/before':>19}")
    for mode in ("sequential", "run_programs"):
        print(f"{mode:<14}{median['before'][mode]:>15.2f}{median['after'][mode]:>14.2f}{ratio[mode]:>19.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "ref": ref, "layers_after": layers, "rounds": args.rounds, "programs_per_round": args.programs,
        "cpus": os.cpu_count(), "max_workers": versions["after"].SandboxLimits().max_workers,
        "load_before": load_before, "load_after": load_after, "programs_per_s": rates, "median": median,
        "cost_ratio_after_over_before": ratio,
    }, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
