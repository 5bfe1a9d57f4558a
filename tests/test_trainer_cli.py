"""``python -m peft_svf.trainer``: an alias of ``peft-svf train`` (one parser, one set of defaults)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datasets import Dataset

from peft_svf.cli import main as cli_main
from peft_svf.tasks import Task, register_task
from peft_svf.trainer.__main__ import main
from trainer_fixtures import prompts, starts_with, tiny_llama, tiny_tokenizer


def _toy_split(split: str) -> Dataset:
    return Dataset.from_dict(
        {"prompt": prompts(64 if split == "train" else 32, seed=0 if split == "train" else 1)}
    )


def test_alias_trains_an_expert_and_reports_base_and_expert_accuracy(tmp_path, capsys):
    register_task(
        Task(name="toy_starts_with_e", domain="toy", loader=_toy_split, reward=starts_with, max_new_tokens=4),
        overwrite=True,
    )
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    output = tmp_path / "expert"
    code = main(
        ["--task", "toy_starts_with_e", "--model", str(tmp_path / "model"), "--steps", "20", "--lr", "0.3",
         "--eval-steps", "10", "--valid-n", "16", "--test-n", "32", "--output-dir", str(output), "--quiet"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{\n") : out.rindex("\n}") + 2])  # the summary printed as JSON
    assert out.strip().splitlines()[-1].startswith(f"expert saved to {output / 'expert'}")
    assert printed["expert_test_accuracy"] == results["expert_test_accuracy"]
    assert results["test_n"] == 32 and results["trainable_parameters"] > 0
    assert results["expert_test_accuracy"] >= results["base_test_accuracy"] + 0.3, results
    assert set(results["valid_accuracy_by_step"]) == {"10", "20"}  # JSON keys
    assert (output / "expert" / "adapter_config.json").exists()


def test_alias_help_is_peft_svf_train_help(capsys):
    """Same parser: the alias's --help is ``peft-svf train --help`` word for word (defaults included)."""
    outputs = []
    for call in (lambda: main(["--help"]), lambda: cli_main(["train", "--help"])):
        try:
            call()
        except SystemExit as exc:
            assert exc.code == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "optimizer steps (default: 40)" in outputs[0] and "validation items (default: 50)" in outputs[0]


def test_python_m_peft_svf_trainer_runs_the_alias():
    """The module entry point itself (not only its main function) reaches the train parser."""
    done = subprocess.run(
        [sys.executable, "-m", "peft_svf.trainer", "--task", "offline_math", "--steps", "many"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("peft-svf train: error: argument --steps"), done.stderr


def test_deprecated_kl_coef_flag_warns_and_becomes_beta(tmp_path, monkeypatch):
    """``--kl-coef`` (the first release's flag) still reaches the recipe, as ``beta``, with a FutureWarning."""
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    received = {}

    def train_expert(*args, **kwargs):
        received.update(kwargs)
        raise KeyboardInterrupt  # stop before training: only the arguments are under test

    monkeypatch.setattr("peft_svf.trainer.recipe.train_expert", train_expert)
    with (
        pytest.warns(FutureWarning, match="`--kl-coef` is deprecated.*`--beta=0.25`"),
        pytest.raises(KeyboardInterrupt),
    ):
        main(["--task", "offline_math", "--model", str(tmp_path / "model"), "--kl-coef", "0.25", "--quiet"])
    assert received["beta"] == 0.25 and "kl_coef" not in received
