"""Two CPU processes (gloo) with half the per-device batch train the same vectors as one process.

The prompts share an instruction prefix, so the prefix-cache forward runs under DDP too.

Run by pytest, this file launches itself through ``accelerate launch``; run as a script, it trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from datasets import Dataset

from trainer_fixtures import adapter_state, make_trainer, prompts

STEPS = 4


def _train(output: Path, per_device_batch: int) -> None:
    """Train on the shared toy task and save the adapter vectors from the main process."""
    trainer = make_trainer(
        str(output / "run"),
        # A common instruction: each process runs it once per batch and shares its cache (SVFTrainer's
        # share_prompt_prefix), so DDP sees two forwards of the model before each backward.
        train_dataset=Dataset.from_dict({"prompt": prompts(48, prefix="continue these letters: ")}),
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=2,
        max_steps=STEPS,
        beta=0.1,
    )
    initial = adapter_state(trainer.model)
    trainer.train()
    if trainer.accelerator.is_main_process:
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        result = {"initial": initial, "vectors": adapter_state(trainer.model), "rewards": rewards}
        torch.save(result, output / "result.pt")


def _launch(output: Path, num_processes: int, per_device_batch: int) -> dict:
    # `accelerate launch --cpu` starts one process (several need mpirun); torchrun-style multi-process
    # launching on the CPU is `--multi_gpu` with ACCELERATE_USE_CPU=1, which selects gloo.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    mode = ["--multi_gpu"] if num_processes > 1 else ["--cpu"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *mode,
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        __file__, str(output), str(per_device_batch),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(output / "result.pt")


def test_two_processes_with_half_the_batch_match_one_process(tmp_path):
    one = _launch(tmp_path / "one", num_processes=1, per_device_batch=8)
    two = _launch(tmp_path / "two", num_processes=2, per_device_batch=4)
    assert len(one["rewards"]) == STEPS
    # Same completions and rewards: sampling is seeded per sample, not per process or batch.
    assert two["rewards"] == one["rewards"]
    assert one["vectors"].keys() == two["vectors"].keys()
    for name, value in one["vectors"].items():
        # Summation order differs (two half-batches averaged by DDP vs one batch): float rounding, which
        # Adam's normalisation lifts where gradients are tiny. Bound it by the distance training moved.
        moved = (value - one["initial"][name]).abs().max().item()
        assert moved > 0.1, name
        assert (two["vectors"][name] - value).abs().max().item() <= 1e-3 * moved, name


if __name__ == "__main__":
    from accelerate import PartialState

    _train(Path(sys.argv[1]), int(sys.argv[2]))
    # Tear gloo down before exit: left to the interpreter, a rank can abort ("terminate called without an
    # active exception") after training has finished, failing the launch.
    PartialState().destroy_process_group()
