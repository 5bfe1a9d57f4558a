"""The examples run as a user runs them (a subprocess, ``--quick`` or ``--dry-run``) and print what they claim."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(script: str, *args: str, svd_cache: Path | None = None, timeout: int = 300) -> str:
    """Stdout of ``python examples/<script> <args>`` on one thread, offline; fails with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if svd_cache is not None:  # tiny models: keep their decompositions out of the user's cache
        env["PEFT_SVF_CACHE"] = str(svd_cache)
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def number_after(text: str, label: str) -> float:
    match = re.search(re.escape(label) + r"\s*(-?[\d.,e+-]+)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1).replace(",", "").rstrip(";,."))


def test_llama3_recipe_dry_run_builds_the_paper_plan_without_downloading():
    out = run_example("llama3_gpu_recipe.py", "--dry-run")
    # Paper Table 4 counts on Llama-3-8B, from the shapes of a weightless copy.
    assert number_after(out, "SVF mlp ") == 393_216
    assert number_after(out, "SVF attention") == 163_840
    assert number_after(out, "SVF mlp+attention") == 557_056
    assert number_after(out, "LoRA r=16 q,v") == 6_815_744
    train = [line for line in out.splitlines() if line.startswith("train ")]
    assert len(train) == 3 * 4  # three tasks x the paper's KL sweep 0.0-0.3
    for line in train:
        assert "lr=0.002 batch=8x32 clip=0.001 cosine" in line and "eval every 10" in line, line
    assert {line.split()[1] for line in train} == {"gsm8k", "mbpp", "arc_easy"}
    assert sum(line.startswith("lora ") for line in out.splitlines()) == 3
    assert "nothing downloaded or trained" in out


def test_svf_4bit_quick_identity_training_step_and_reload(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = run_example("svf_4bit.py", "--quick", "--output-dir", str(tmp_path / "adapter"),
                      svd_cache=tmp_path / "cache")  # fmt: skip
    assert "14 Linear4bit layers" in out
    assert number_after(out, "identity error (max |logits - 4-bit base logits|):") == 0.0
    before, after = re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups()
    assert float(after) < float(before)
    assert "14 tensors got gradients, all SVF vectors: True" in out
    assert "quantised base weights unchanged: True" in out
    assert "reloaded onto a fresh 4-bit base, identical logits: True" in out
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SVF"
    assert len(load_file(tmp_path / "adapter" / "adapter_model.safetensors")) == 14


def test_cross_model_transfer_quick_loads_same_layout_and_refuses_another(tmp_path):
    out = run_example("cross_model_transfer.py", "--quick", "--output-dir", str(tmp_path / "out"),
                      svd_cache=tmp_path / "cache")  # fmt: skip
    assert "loaded onto the target: 14 vectors, identical to the source's: True" in out
    # The same vectors move an unrelated model's weights elsewhere, a fine-tune's nearly the same way.
    assert abs(number_after(out, "on target) for model.layers.0.mlp.down_proj:")) < 0.3
    assert number_after(out, "fine-tune of the source:") > 0.9
    assert "each vector's values permuted: True" in out
    assert (
        "mismatched layout refused: ValueError" in out and "but this base model's weight needs (32,)" in out
    )
    expert = load_file(tmp_path / "out" / "target" / "expert" / "adapter_model.safetensors")
    shuffled = load_file(tmp_path / "out" / "target" / "shuffled" / "adapter_model.safetensors")
    assert expert.keys() == shuffled.keys() and len(expert) == 14
    assert all(not (expert[k] == shuffled[k]).all() for k in expert)
    assert all((expert[k].sort().values == shuffled[k].sort().values).all() for k in expert)


@pytest.mark.embedded
def test_few_shot_adaptation_quick_saves_a_reloadable_mixture(tmp_path):
    out = run_example("few_shot_adaptation.py", "--quick", "--output-dir", str(tmp_path / "out"), timeout=600)
    alpha = dict(re.findall(r"(\w+)=([\d.]+)", out.split("best alpha", 1)[1].split(";", 1)[0]))
    assert set(alpha) == {"math", "code", "reasoning"} and all(0 <= float(a) <= 1 for a in alpha.values())
    assert 0 <= number_after(out, "few-shot accuracy") <= 1
    assert re.search(r"held-out accuracy: base [\d.]+%, adapted [\d.]+%", out)
    saved = tmp_path / "out" / "unit_conversion"
    assert json.loads((saved / "adapter_config.json").read_text())["peft_type"] == "SVF"
    assert "reloaded adapter gives identical logits: True" in out
