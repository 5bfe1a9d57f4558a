"""An interrupted run resumed from its checkpoint ends exactly where the uninterrupted run ends.

A run killed during a save (SIGKILL, real processes) never resumes from a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from peft_svf.trainer import SVFTrainer
from peft_svf.trainer.checkpoints import checkpoint_problems
from trainer_fixtures import adapter_state, make_trainer, prompts

SETTINGS = {
    "max_steps": 6,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "beta": 0.1,
    "save_strategy": "steps",
    "save_steps": 3,
}


def _rewards_by_step(trainer) -> dict[int, float]:
    return {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}


@pytest.mark.parametrize("merge", [False, True])
def test_resume_from_checkpoint_continues_exactly(tmp_path, merge):
    # Merged rollouts put the original base weights back (merged_for_inference), so the uninterrupted run's
    # base stays the pristine base the resumed run starts from: exact with merging too.
    # 40 prompts, 16 per optimizer step: the resumed run starts mid-epoch, in a reshuffled order.
    data = Dataset.from_dict({"prompt": prompts(40)})
    settings = {**SETTINGS, "merge_adapter_for_generation": merge}
    full = make_trainer(str(tmp_path / "full"), train_dataset=data, **settings)
    full.train()

    resumed = make_trainer(str(tmp_path / "resumed"), train_dataset=data, **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))

    assert resumed.state.global_step == full.state.global_step == 6
    full_rewards, resumed_rewards = _rewards_by_step(full), _rewards_by_step(resumed)
    assert [resumed_rewards[s] for s in (4, 5, 6)] == [full_rewards[s] for s in (4, 5, 6)]
    full_vectors, resumed_vectors = adapter_state(full.model), adapter_state(resumed.model)
    assert full_vectors.keys() == resumed_vectors.keys()
    for name, value in full_vectors.items():
        assert torch.equal(resumed_vectors[name], value), name
    # Same optimizer state (AdamW moments), not only the same vectors.
    full_state = full.optimizer.state_dict()["state"]
    resumed_state = resumed.optimizer.state_dict()["state"]
    assert full_state.keys() == resumed_state.keys()
    for key, moments in full_state.items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(resumed_state[key][moment], moments[moment]), (key, moment)


EXACT = {**SETTINGS, "merge_adapter_for_generation": False}


def _full_run(tmp_path) -> tuple[SVFTrainer, Dataset]:
    """Six uninterrupted steps with checkpoints 3 and 6, without merging (so resuming is exact)."""
    data = Dataset.from_dict({"prompt": prompts(40)})
    full = make_trainer(str(tmp_path / "full"), train_dataset=data, **EXACT)
    full.train()
    return full, data


def test_resume_true_skips_an_incomplete_newest_checkpoint_and_a_leftover_temp_folder(tmp_path):
    full, data = _full_run(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "full" / "checkpoint-3", run / "checkpoint-3")
    # The newest checkpoint as a save killed the old way leaves it: the adapter written, the rest missing.
    (run / "checkpoint-6").mkdir()
    shutil.copy(tmp_path / "full" / "checkpoint-6" / "adapter_config.json", run / "checkpoint-6")
    weights = (tmp_path / "full" / "checkpoint-6" / "adapter_model.safetensors").read_bytes()
    (run / "checkpoint-6" / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    # And a complete-looking temp folder of a later step that was never renamed: never taken.
    shutil.copytree(tmp_path / "full" / "checkpoint-6", run / "tmp-checkpoint-9")

    resumed = make_trainer(str(run), train_dataset=data, **EXACT)
    with pytest.warns(UserWarning) as caught:
        resumed.train(resume_from_checkpoint=True)
    messages = [str(w.message) for w in caught]
    assert any("tmp-checkpoint-9" in m and "Removed" in m for m in messages), messages
    skipped = next(m for m in messages if "newest complete checkpoint" in m)
    assert (
        "checkpoint-3" in skipped and "checkpoint-6 (" in skipped and "adapter_model.safetensors" in skipped
    )
    assert "trainer_state.json is missing" in skipped and "no optimizer.pt" in skipped
    assert not (run / "tmp-checkpoint-9").exists()
    # Resumed from step 3, it ends exactly where the uninterrupted run ends.
    full_rewards, resumed_rewards = _rewards_by_step(full), _rewards_by_step(resumed)
    assert resumed.state.global_step == 6 and resumed_rewards == full_rewards
    full_vectors, resumed_vectors = adapter_state(full.model), adapter_state(resumed.model)
    assert all(torch.equal(resumed_vectors[n], v) for n, v in full_vectors.items())
    assert checkpoint_problems(str(run / "checkpoint-6")) == []  # re-saved, complete this time


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt"])
def test_an_explicit_checkpoint_without_optimizer_or_scheduler_is_refused(tmp_path, missing):
    _, data = _full_run(tmp_path)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    (checkpoint / missing).unlink()
    resumed = make_trainer(str(tmp_path / "resumed"), train_dataset=data, **EXACT)
    before = adapter_state(resumed.model)
    with pytest.raises(ValueError, match=rf"Cannot resume from .*checkpoint-3: no {re.escape(missing)}"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in adapter_state(resumed.model).items())


def test_resume_true_with_only_incomplete_checkpoints_names_what_is_missing(tmp_path):
    _, data = _full_run(tmp_path)
    for step in (3, 6):
        (tmp_path / "full" / f"checkpoint-{step}" / "rng_state.pth").write_bytes(b"PK\x03\x04 truncated")
    resumed = make_trainer(str(tmp_path / "full"), train_dataset=data, **EXACT)
    with pytest.raises(
        ValueError, match=r"No complete checkpoint .*checkpoint-6 \(rng_state.pth is not a readable"
    ):
        resumed.train(resume_from_checkpoint=True)


def test_saves_are_renamed_complete_and_rotation_keeps_the_newest(tmp_path):
    trainer = make_trainer(str(tmp_path), max_steps=4, save_steps=1, save_strategy="steps", save_total_limit=2,
                           per_device_train_batch_size=8)  # fmt: skip
    trainer.train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3", "checkpoint-4"]
    for step in (3, 4):
        assert checkpoint_problems(str(tmp_path / f"checkpoint-{step}")) == []
        state = json.loads((tmp_path / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["global_step"] == step


def test_sigkill_during_saves_never_resumes_from_a_half_checkpoint(tmp_path):
    # A real training process (forked by the driver) killed 0-10 ms into a save, 5 times, each time resumed
    # with resume_from_checkpoint=True; then transformers' own saves (the legacy mode) for contrast.
    driver = Path(__file__).with_name("kill_during_save.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(driver), str(tmp_path), "--tries", "5", "--legacy-tries", "3"],
        capture_output=True, text=True, timeout=600, env=env, check=True,
    )  # fmt: skip
    results = json.loads(done.stdout.strip().splitlines()[-1])
    atomic, legacy = results["atomic"], results["legacy"]
    assert atomic["killed_during_save"] == atomic["tries"] == 5, atomic
    assert atomic["half_checkpoints_seen"] >= 1, atomic  # the kills did interrupt saves
    assert atomic["half_named_checkpoints"] == 0 and atomic["half_checkpoint_picked"] == 0, atomic
    assert atomic["resumes_succeeded"] == atomic["resumes"] == 5, atomic  # runs 2-5 and the last one
    assert atomic["finished"] and atomic["bit_identical"] is True, atomic
    # The same kills with transformers' non-atomic saves leave checkpoint-N half written, and it is picked.
    assert legacy["half_named_checkpoints"] >= 1 and legacy["half_checkpoint_picked"] >= 1, legacy
