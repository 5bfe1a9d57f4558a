"""Kill a real SVFTrainer run with SIGKILL during its checkpoint saves, resume it, and compare with a clean run.

Run as a script (``python tests/kill_during_save.py OUT_DIR --tries 20 [--legacy-tries 20]``), it
prints one JSON object. The driver imports the training stack once and forks every training process from
itself (it never trains, so the fork carries no thread pools); each child trains the tiny Llama of
``trainer_fixtures`` with ``save_steps=1``, resuming with ``resume_from_checkpoint=True`` from
whatever a killed predecessor left. The legacy mode uses transformers' own ``Trainer._save_checkpoint`` and
``Trainer.train``, which is what SVFTrainer did before its checkpoints were atomic.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import time
import types
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer
from transformers.trainer_pt_utils import safe_globals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_fixtures import make_trainer, prompts

SETTINGS = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "beta": 0.1,
    "save_strategy": "steps",
    "save_steps": 1,
    "save_total_limit": 2,  # rotation must never delete the last complete checkpoint before the new one is
    "max_completion_length": 3,
    # Merged rollouts leave rounding in the base weights that a resumed run does not have: exact only without.
    "merge_adapter_for_generation": False,
}
STEP_LOG = "steps.log"
_NUMBERED = re.compile(r"^checkpoint-(\d+)$")


def train_child(run_dir: str, max_steps: int, legacy: bool) -> None:
    """One training process: resume from the newest checkpoint if there is one, log each finished step."""
    torch.set_num_threads(1)
    log = os.open(os.path.join(run_dir, "child-output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    trainer = make_trainer(
        run_dir, train_dataset=Dataset.from_dict({"prompt": prompts(24)}), max_steps=max_steps, **SETTINGS
    )
    if legacy:
        trainer._save_checkpoint = types.MethodType(Trainer._save_checkpoint, trainer)
        trainer.train = types.MethodType(Trainer.train, trainer)

    steps = open(os.path.join(run_dir, STEP_LOG), "a", buffering=1)  # noqa: SIM115 (open until killed)
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """'start S' when training begins at step S (S > 0: resumed), 'done S' after each optimizer step."""

        def on_train_begin(self, args, state, control, **kwargs):
            steps.write(f"start {state.global_step}\n")

        def on_step_end(self, args, state, control, **kwargs):
            steps.write(f"done {state.global_step}\n")

    trainer.add_callback(StepLog())
    resume = any(_NUMBERED.match(name) for name in os.listdir(run_dir))
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_model(os.path.join(run_dir, "final"))
    steps.write("finished\n")


def _fork(run_dir: str, max_steps: int, legacy: bool) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            train_child(run_dir, max_steps, legacy)
        except (
            BaseException
        ):  # the child reports through its log and exit status, never returns to the driver
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def complete_steps(run_dir: str) -> list[int]:
    """Steps whose ``checkpoint-N`` holds everything a resume reads (checked independently of SVFTrainer)."""
    steps = []
    for name in os.listdir(run_dir):
        match = _NUMBERED.match(name)
        if match is None:
            continue
        folder = os.path.join(run_dir, name)
        try:
            with open(os.path.join(folder, "trainer_state.json")) as handle:
                if json.load(handle)["global_step"] != int(match.group(1)):
                    continue
            load_file(os.path.join(folder, "adapter_model.safetensors"))
            # These files were written by this driver's own children, not downloaded; loaded as Trainer does.
            with safe_globals():
                for file in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
                    torch.load(os.path.join(folder, file), weights_only=True)
        except Exception:  # any missing or truncated file: not complete
            continue
        steps.append(int(match.group(1)))
    return sorted(steps)


def _log_lines(run_dir: str) -> list[str]:
    path = os.path.join(run_dir, STEP_LOG)
    return Path(path).read_text().splitlines() if os.path.exists(path) else []


def _saves_in_progress(run_dir: str, legacy: bool, seen: set[str]) -> str | None:
    """A save that has begun: a new tmp-checkpoint-N (atomic) or a new checkpoint-N (legacy) folder."""
    pattern = _NUMBERED if legacy else re.compile(r"^tmp-checkpoint-(\d+)$")
    for name in os.listdir(run_dir):
        if pattern.match(name) and name not in seen:
            return name
    return None


def _newest_named(run_dir: str) -> int:
    """The step of the ``checkpoint-N`` that transformers' ``get_last_checkpoint`` would pick (0: none)."""
    return max((int(m.group(1)) for n in os.listdir(run_dir) if (m := _NUMBERED.match(n))), default=0)


def _wait_and_kill(pid: int, run_dir: str, legacy: bool, rng: random.Random) -> bool:
    """Let the child finish 0-2 saves, then SIGKILL it 0-10 ms into the next; False if it ended first."""
    seen = set(os.listdir(run_dir))
    saves_to_skip = rng.randint(0, 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # the child ended by itself (finished or crashed)
        started = _saves_in_progress(run_dir, legacy, seen)
        if started is None:
            time.sleep(0.0005)
            continue
        seen.add(started)
        if saves_to_skip:
            saves_to_skip -= 1
            continue
        time.sleep(rng.uniform(0, 0.01))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return True
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise TimeoutError(f"no save began in 120 s in {run_dir}")


def _one_run(
    run_dir: str, max_steps: int, legacy: bool, rng: random.Random | None, figures: dict
) -> list[str]:
    """Start a child (killed during a save when ``rng`` is given) and count what its resume did."""
    complete = complete_steps(run_dir)
    expected, named = max(complete, default=0), _newest_named(run_dir)
    lines_before = len(_log_lines(run_dir))
    pid = _fork(run_dir, max_steps, legacy)
    if rng is None:
        os.waitpid(pid, 0)
    else:
        figures["killed_during_save"] += int(_wait_and_kill(pid, run_dir, legacy, rng))
    lines = _log_lines(run_dir)[lines_before:]
    starts = [int(line.split()[1]) for line in lines if line.startswith("start")]
    if named:  # there was a checkpoint to resume from
        figures["resumes"] += 1
        picked = starts[0] if starts else named  # a child that died before training crashed on its pick
        figures["half_checkpoint_picked"] += int(picked != expected)
        figures["resumes_succeeded"] += int(picked == expected and f"done {expected + 1}" in lines)
    return lines


def kill_during_saves(run_dir: str, tries: int, max_steps: int, legacy: bool, seed: int = 0) -> dict:
    """``tries`` children each killed during a save, then one that runs to the end; figures for the report.

    ``half_checkpoints_seen``: kills after which a half-written checkpoint was on disk (a ``tmp-checkpoint-N``
    or an incomplete ``checkpoint-N``); ``half_named_checkpoints``: those where it was the newest
    ``checkpoint-N``, which ``get_last_checkpoint`` picks; ``half_checkpoint_picked``: resumes that started
    from anything but the newest complete checkpoint, or crashed on their pick.
    """
    rng = random.Random(seed)
    os.makedirs(run_dir, exist_ok=True)
    figures = dict.fromkeys(
        ("tries", "killed_during_save", "half_checkpoints_seen", "half_named_checkpoints", "resumes"), 0
    )
    figures.update(half_checkpoint_picked=0, resumes_succeeded=0)
    for _ in range(tries):
        _one_run(run_dir, max_steps, legacy, rng, figures)
        figures["tries"] += 1
        names = os.listdir(run_dir)
        complete = set(complete_steps(run_dir))
        incomplete = [n for n in names if (m := _NUMBERED.match(n)) and int(m.group(1)) not in complete]
        temp = [n for n in names if n.startswith("tmp-checkpoint-")]
        figures["half_checkpoints_seen"] += int(bool(incomplete or temp))
        figures["half_named_checkpoints"] += int(_newest_named(run_dir) not in complete | {0})
    lines = _one_run(run_dir, max_steps, legacy, None, figures)
    figures["finished"] = "finished" in lines
    return figures


def run(out_dir: str, tries: int, max_steps: int, legacy: bool, seed: int) -> dict:
    """Interrupted run (``tries`` kills) and an uninterrupted one; are their final adapters bit-identical?"""
    torch.set_num_threads(1)
    start = time.perf_counter()
    clean_dir, killed_dir = os.path.join(out_dir, "clean"), os.path.join(out_dir, "killed")
    os.makedirs(clean_dir, exist_ok=True)
    pid = _fork(clean_dir, max_steps, legacy)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("the uninterrupted run failed: " + Path(clean_dir, "child-output.log").read_text())
    figures = kill_during_saves(killed_dir, tries, max_steps, legacy, seed)
    figures["bit_identical"] = None
    if figures["finished"]:
        clean = load_file(os.path.join(clean_dir, "final", "adapter_model.safetensors"))
        killed = load_file(os.path.join(killed_dir, "final", "adapter_model.safetensors"))
        figures["bit_identical"] = clean.keys() == killed.keys() and all(
            torch.equal(clean[k], killed[k]) for k in clean
        )
    figures.update(mode="legacy" if legacy else "atomic", max_steps=max_steps, seed=seed)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--tries", type=int, default=20, help="kills of SVFTrainer's atomic saves")
    parser.add_argument("--legacy-tries", type=int, default=0, help="kills of transformers' own saves")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = {}
    for mode, tries in (("atomic", args.tries), ("legacy", args.legacy_tries)):
        if tries:
            # Each try advances the run by about 2 steps (measured); leave room so no child reaches the end.
            out = os.path.join(args.out_dir, mode)
            results[mode] = run(out, tries, 4 * tries + 6, mode == "legacy", args.seed)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
