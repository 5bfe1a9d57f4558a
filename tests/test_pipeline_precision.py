"""bf16 mixed precision in the recipe and the main job: where it applies, and that it is recorded with each
expert, so that an expert trained in one precision is not reused for the other."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import peft_svf.adaptive as adaptive
import peft_svf.pipeline.experts as experts_module
from peft_svf.pipeline import FULL
from peft_svf.pipeline.config import parse_args
from peft_svf.pipeline.experts import classification_expert, domain_experts
from peft_svf.precision import fast_bf16
from peft_svf.trainer.recipe import TASK_BF16, recipe_bf16


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


@pytest.mark.skipif(torch.cuda.is_available() or not Path("/proc/cpuinfo").exists(), reason="a Linux CPU's flags")
def test_fast_bf16_is_the_cpus_amx():
    """AMX's bf16 tiles, not AVX512-BF16 alone: on a CPU with only the latter, bf16 matmuls are slower than
    float32's (precision.fast_bf16)."""
    assert fast_bf16() is ("amx_bf16" in cpu_flags())


def test_the_recipe_trains_in_bf16_only_where_validation_chose_it_and_the_machine_has_it():
    for task in ("offline_math", "offline_code", "offline_reasoning", "task_identification"):
        assert recipe_bf16("svf", task) is (("svf", task) in TASK_BF16 and fast_bf16())
        assert recipe_bf16("lora", task) is False
        assert recipe_bf16("svf", task, True) is True and recipe_bf16("svf", task, False) is False


def test_bf16_is_recorded_with_each_expert_and_absent_in_float32():
    assert FULL.expert_settings(1e-2, 0.1, 3, True, bf16=True)["bf16"] is True
    assert "bf16" not in FULL.expert_settings(1e-2, 0.1, 3, True, bf16=False)
    assert replace(FULL, bf16=True).classifier_settings(3)["bf16"] is True
    assert "bf16" not in FULL.classifier_settings(3)  # z_c stays float32 under the recipe
    assert "bf16" not in FULL.to_dict()  # the recipe's precision: results.json keeps the keys it had
    assert replace(FULL, bf16=False).to_dict()["bf16"] is False


def test_every_training_call_gets_its_precision_and_an_expert_of_the_other_is_not_reused(monkeypatch, tmp_path):
    calls = []

    def fake_training(*args, **kwargs):
        output_dir = args[3] if len(args) > 3 else kwargs["output_dir"]
        calls.append((output_dir.name, kwargs["bf16"]))
        (output_dir / "expert").mkdir(parents=True, exist_ok=True)
        (output_dir / "expert" / "adapter_config.json").write_text("{}")
        return {}

    monkeypatch.setattr(experts_module, "train_expert", fake_training)
    monkeypatch.setattr(adaptive, "train_classification_expert", fake_training)
    for bf16 in (False, None, True):
        calls.clear()
        config = replace(FULL, output_dir=tmp_path / str(bf16), bf16=bf16)
        domain_experts(config, lambda: (None, None))
        classification_expert(config, lambda: (None, None))
        recipe = {d: ("svf", t) in TASK_BF16 and fast_bf16() for d, t in FULL.expert_tasks.items()}
        experts = [(d, recipe[d] if bf16 is None else bf16) for d in FULL.expert_tasks]
        assert calls == [*experts, ("classifier", bool(bf16))]
    calls.clear()  # the recipe's job where the float32 job ran retrains exactly the experts it trains in bf16
    domain_experts(replace(FULL, output_dir=tmp_path / "False", bf16=None), lambda: (None, None))
    assert calls == [(d, True) for d, t in FULL.expert_tasks.items() if recipe_bf16("svf", t)]


def test_the_bf16_flag():
    assert parse_args([]).bf16 is None
    assert parse_args(["--bf16"]).bf16 is True
    assert parse_args(["--no-bf16"]).bf16 is False
