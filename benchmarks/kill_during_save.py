"""Kill-during-save figures: SIGKILL a real SVFTrainer run during its checkpoint saves, then resume it.

    OMP_NUM_THREADS=1 python benchmarks/kill_during_save.py [--tries 20] [--seed 0]

Runs ``tests/kill_during_save.py`` (the driver the test uses) ``--tries`` times with SVFTrainer's atomic
checkpoints and as many times with transformers' own ``Trainer._save_checkpoint`` (the legacy mode, what
SVFTrainer did before), ``save_steps=1``, each child killed 0-10 ms into a save and the next one resumed
with ``resume_from_checkpoint=True``. Prints a table and writes JSON to
``benchmarks/results/kill_during_save.json``, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVER = Path(__file__).resolve().parent.parent / "tests" / "kill_during_save.py"
RESULTS = Path(__file__).parent / "results" / "kill_during_save.json"
ROWS = [
    ("tries", "tries (children SIGKILLed)"),
    ("killed_during_save", "killed while a save was under way"),
    ("half_checkpoints_seen", "half-written checkpoint on disk after the kill"),
    ("half_named_checkpoints", "... named checkpoint-N (what get_last_checkpoint picks)"),
    ("resumes", "resumes (resume_from_checkpoint=True with a checkpoint there)"),
    ("half_checkpoint_picked", "resumes that took a half checkpoint (or crashed on it)"),
    ("resumes_succeeded", "resumes that trained on from the newest complete one"),
    ("finished", "last run finished"),
    ("bit_identical", "final adapter torch.equal to an uninterrupted run"),
    ("seconds", "seconds"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, str(DRIVER), workdir, "--tries", str(args.tries)]
        command += ["--legacy-tries", str(args.tries), "--seed", str(args.seed)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()

    print(f"{'':58} {'atomic (now)':>14} {'legacy (before)':>16}")
    for key, label in ROWS:
        print(f"{label:58} {results['atomic'][key]!s:>14} {results['legacy'][key]!s:>16}")
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    RESULTS.parent.mkdir(exist_ok=True)
    payload = {**results, "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count()}
    RESULTS.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
