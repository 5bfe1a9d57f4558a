"""Cost per graded completion: the old exit-status reward against the grader (``peft_svf.tasks.grader``).

Before: one program = code + the row's tests, passed when it exits 0 (what ``code_reward`` ran until the
grader). After: one program = code + the probe harness, judged in this process. Both run through the
same sandbox (the working tree's), on HumanEval's 164 canonical solutions; rounds alternate so that the
shared machine's load hits both alike. Also timed: building the suites from the rows (parsing, plus the
cached reference runs of the 4 fallback problems) and judging the outputs in the parent.

    OMP_NUM_THREADS=1 python benchmarks/grader_cost.py [--rounds 3]

Prints a table and writes benchmarks/results/grader_cost.json, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path

from peft_svf.tasks import get_task
from peft_svf.tasks.grader import (
    GRADER_LIMITS,
    check_function_tests,
    complete_function,
    grade,
    parse_outcomes,
)
from peft_svf.tasks.sandbox import run_programs

RESULTS = Path(__file__).parent / "results" / "grader_cost.json"


def _exit_status_program(code: str, row: dict) -> str:
    """The program the reward used to run: the completed function, the row's check(), then check(entry)."""
    return f"{complete_function(code, row['stub'], row['entry_point'])}\n\n{row['test']}\n\ncheck({row['entry_point']})\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = list(get_task("humaneval").load("test"))
    codes = [r["canonical_solution"] for r in rows]
    load_before = os.getloadavg()
    start = time.perf_counter()
    suites = [check_function_tests(r) for r in rows]
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(10):
        cached = [check_function_tests(r) for r in rows]
    cached_build_s = (time.perf_counter() - start) / 10
    assert cached == suites
    old_programs = [_exit_status_program(c, r) for c, r in zip(codes, rows, strict=True)]
    rates: dict[str, list[float]] = {"before": [], "after": []}
    judge_s: list[float] = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        old = run_programs(old_programs, GRADER_LIMITS)
        rates["before"].append(len(rows) / (time.perf_counter() - start))
        assert all(r.passed for r in old)
        start = time.perf_counter()
        verdicts = grade(codes, suites)
        rates["after"].append(len(rows) / (time.perf_counter() - start))
        assert all(v.passed for v in verdicts)
        start = time.perf_counter()
        for suite, verdict in zip(suites, verdicts, strict=True):
            marker = re.search(r"^([0-9a-f]{32}) 0 ", verdict.result.output, re.M).group(1)  # as grade read it
            suite.judge(parse_outcomes(verdict.result.output, marker, len(suite.probes)))
        judge_s.append((time.perf_counter() - start) / len(rows))
    load_after = os.getloadavg()
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = median["before"] / median["after"]
    exact = sum(s.exact for s in suites)
    print(f"HumanEval: {exact} checks covered exactly, {len(rows) - exact} by the reference fallback")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    print(f"{'':<44}{'before':>10}{'after':>10}")
    print(f"{'programs per second (run_programs, median)':<44}{median['before']:>10.2f}{median['after']:>10.2f}")
    print(f"{'cost per program, after / before':<44}{'':>10}{ratio:>10.2f}")
    print(f"building 164 suites: first {build_s:.2f} s (incl. 4 reference runs), cached {cached_build_s * 1e3:.2f} ms")
    print(f"judging in the parent: {statistics.median(judge_s) * 1e6:.0f} us per program")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "programs": len(rows), "rounds": args.rounds, "cpus": os.cpu_count(), "load_before": load_before,
        "load_after": load_after, "programs_per_s": rates, "median_programs_per_s": median,
        "cost_ratio_after_over_before": ratio, "suite_build_first_s": build_s,
        "suite_build_cached_s": cached_build_s, "judge_s_per_program": statistics.median(judge_s),
        "humaneval_exact": exact, "humaneval_fallback": len(rows) - exact,
    }, indent=2))  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
