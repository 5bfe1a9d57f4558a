"""An interrupted run resumed from its checkpoint ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from test_trainer_fixtures import adapter_state, make_trainer, prompts

SETTINGS = {
    "max_steps": 6,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "kl_coef": 0.1,
    "save_strategy": "steps",
    "save_steps": 3,
}


def _rewards_by_step(trainer) -> dict[int, float]:
    return {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}


@pytest.mark.parametrize(("merge", "tolerance"), [(False, 0.0), (True, 1e-5)])
def test_resume_from_checkpoint_continues_exactly(tmp_path, merge, tolerance):
    # Merged rollouts leave float rounding in the base weights of the uninterrupted run (W + Δ - Δ), which
    # the resumed run, starting from the pristine base, does not have: exact only without merging.
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
        torch.testing.assert_close(resumed_vectors[name], value, rtol=0, atol=tolerance, msg=name)
    # Same optimizer state (AdamW moments), not only the same vectors.
    full_state = full.optimizer.state_dict()["state"]
    resumed_state = resumed.optimizer.state_dict()["state"]
    assert full_state.keys() == resumed_state.keys()
    for key, moments in full_state.items():
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(resumed_state[key][moment], moments[moment], rtol=0, atol=tolerance)
