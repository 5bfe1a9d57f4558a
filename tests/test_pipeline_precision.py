"""The main job's ``bf16`` setting: it reaches every training call and is recorded, so experts are not mixed up."""

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
from peft_svf.precision import native_bf16


def test_bf16_is_recorded_with_each_expert_and_absent_in_float32():
    config, float32 = replace(FULL, bf16=True), replace(FULL, bf16=False)
    assert config.expert_settings(1e-2, 0.1, 3, True)["bf16"] is True
    assert config.classifier_settings()["bf16"] is True
    assert config.to_dict()["bf16"] is True
    assert "bf16" not in float32.expert_settings(1e-2, 0.1, 3, True)
    assert "bf16" not in float32.classifier_settings()
    assert "bf16" not in float32.to_dict()  # float32 results.json files keep the keys they had


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


@pytest.mark.skipif(torch.cuda.is_available() or not Path("/proc/cpuinfo").exists(), reason="a Linux CPU's flags")
def test_the_default_is_bf16_exactly_where_the_cpu_has_bf16_instructions():
    native = bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    assert native_bf16() is native
    assert FULL.bf16 is None and FULL.trains_in_bf16() is native
    assert ("bf16" in FULL.to_dict()) is native


def test_the_bf16_flag():
    assert parse_args([]).bf16 is None
    assert parse_args(["--bf16"]).bf16 is True
    assert parse_args(["--no-bf16"]).bf16 is False
    assert parse_args(["--quick", "--no-bf16"]).trains_in_bf16() is False


def test_every_training_call_gets_the_jobs_precision_and_a_float32_expert_is_not_reused(monkeypatch, tmp_path):
    calls = []

    def fake_training(*args, **kwargs):
        calls.append(kwargs["bf16"])
        output_dir = args[3] if len(args) > 3 else kwargs["output_dir"]
        (output_dir / "expert").mkdir(parents=True, exist_ok=True)
        (output_dir / "expert" / "adapter_config.json").write_text("{}")
        return {}

    monkeypatch.setattr(experts_module, "train_expert", fake_training)
    monkeypatch.setattr(adaptive, "train_classification_expert", fake_training)
    for bf16 in (False, True):
        config = replace(FULL, output_dir=tmp_path, bf16=bf16)
        domain_experts(config, lambda: (None, None))
        classification_expert(config, lambda: (None, None))
    assert calls == [False] * 4 + [True] * 4  # the bf16 job trained again: the float32 experts do not match
