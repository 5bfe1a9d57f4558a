"""The ``peft-svf`` command line on tiny models saved to disk (``--model DIR``): help, errors, and each command."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_svf import SVFConfig
from peft_svf.cli.common import REWARDS
from peft_svf.tasks import Task, evaluate, register_task
from trainer_fixtures import (
    prompts,
    starts_with,
)
from trainer_fixtures import run_cli as run

TOY_TASK = "toy_cli_starts_with_e"
COMMANDS = {
    "train": ["--task", "--data", "--reward", "--valid-data", "--test-data", "--model", "--steps", "--lr",
              "--output-dir", "--adapter"],
    "adapt": ["--data", "--reward", "--task", "--expert", "--output-dir", "--population-size", "--generations",
              "--per-layer", "--model"],
    "generate": ["--expert", "--dispatcher", "--classifier", "--max-new-tokens", "--model", "PROMPT"],
    "chat": ["--expert", "--dispatcher", "--system", "--model"],
    "eval": ["--task", "--adapter", "--expert", "--dispatcher", "--n", "--split", "--compare-base", "--model"],
    "push": ["EXPERT_DIR", "REPO_ID", "--private", "--token", "--base-model", "--results"],
}  # fmt: skip


def _toy_split(split: str) -> Dataset:
    return Dataset.from_dict(
        {"prompt": prompts(32 if split == "train" else 16, seed=0 if split == "train" else 1)}
    )


@pytest.fixture(scope="module")
def toy_task() -> str:
    register_task(Task(TOY_TASK, "toy", _toy_split, starts_with, max_new_tokens=4), overwrite=True)
    return TOY_TASK


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in [*COMMANDS, "run"]:
        assert re.search(rf"^\s+{command}\s", out, flags=re.MULTILINE), command


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_help_is_complete(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    for flag in COMMANDS[command]:
        assert flag in out, f"{command} --help does not mention {flag}"
    assert "examples:" in out


TRAINER_STACK = ("torch", "transformers", "peft", "trl", "datasets")


def python(code: str, cache: Path) -> str:
    """stdout of ``code`` in a fresh interpreter (fresh ``sys.modules``, SVD cache in ``cache``); fails on
    a non-zero exit."""
    command = [sys.executable, "-c", textwrap.dedent(code)]
    env = {**os.environ, "PEFT_SVF_CACHE": str(cache)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], *([command, "--help"] for command in COMMANDS)])
def test_help_does_not_import_the_trainer_stack(argv, tmp_path):
    """``peft-svf [cmd] --help`` imports the console script's module only: no torch, transformers, peft..."""
    out = python(f"""
        import sys
        from peft_svf.cli import main  # what the peft-svf console script imports
        try:
            main({argv!r})
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print([name for name in {TRAINER_STACK!r} if name in sys.modules])
    """, tmp_path)
    assert "usage: peft-svf" in out
    assert out.strip().splitlines()[-1] == "[]", out.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["peft_svf.trainer", "peft_svf.pipeline"])
def test_module_entry_point_help_does_not_import_the_trainer_stack(module, tmp_path):
    """``python -m peft_svf.trainer --help`` (the train alias) and ``python -m peft_svf.pipeline --help``."""
    out = python(f"""
        import runpy, sys
        sys.argv = [{module!r}, "--help"]
        try:
            runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print([name for name in {TRAINER_STACK!r} if name in sys.modules])
    """, tmp_path)
    assert "usage: peft-svf" in out
    assert out.strip().splitlines()[-1] == "[]", out.strip().splitlines()[-1]


@pytest.mark.parametrize("peft_first", [False, True])
def test_import_peft_svf_still_registers_svf_with_peft(peft_first, tmp_path):
    """The package's exports load lazily, yet ``import peft_svf`` alone (no name taken from it) lets PEFT
    build, save and reload an SVF model, whether peft is imported after peft_svf or before it."""
    first, then = ("import peft", "import peft_svf") if peft_first else ("import peft_svf", "import peft")
    out = python(f"""
        import sys
        {first}
        light = "torch" not in sys.modules
        {then}
        print(light, "peft_svf.svf" in sys.modules)
        import torch
        from peft import PeftModel, get_peft_model
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        def base():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))

        config = PEFT_TYPE_TO_CONFIG_MAPPING["SVF"](
            target_modules=["0", "2"], init_noise_std=0.3
        )
        model = get_peft_model(base(), config)
        model.save_pretrained({str(tmp_path / "adapter")!r})
        loaded = PeftModel.from_pretrained(base(), {str(tmp_path / "adapter")!r})
        x = torch.randn(3, 6)
        moved = not torch.equal(model(x), base()(x))
        same = torch.allclose(model(x), loaded(x), atol=1e-6)  # eval vs train forward path: ~6e-8 apart
        print(type(model.base_model).__name__, same, moved)
    """, tmp_path / "cache")
    assert out.split() == [str(not peft_first), "True", "SVFModel", "True", "True"]


def test_train_help_lists_the_built_in_rewards(capsys):
    _, out, _ = run(["train", "--help"], capsys)
    assert all(name in out for name in REWARDS)


def test_run_passes_every_flag_to_the_main_job(monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(
        sys.modules, "peft_svf.pipeline", types.SimpleNamespace(main=lambda argv: calls.append(argv))
    )
    assert run(["run", "--help", "--quick"], capsys)[0] == 0
    assert calls == [["--help", "--quick"]]


def test_run_help_shows_the_main_jobs_flags(capsys):
    code, out, _ = run(["run", "--help"], capsys)
    assert code == 0 and out.startswith("usage: peft-svf run")
    assert all(flag in out for flag in ("--quick", "--output-dir", "--model", "--seed", "--unseen-n")), out


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["train"],
        ["train", "--task", "offline_math", "--data", "x.jsonl"],
        ["train", "--task", "no_such_task"],
        ["train", "--task", "offline_math", "--reward", "numeric"],
        ["train", "--data", "{tmp}/missing.jsonl", "--reward", "numeric"],
        ["train", "--data", "{tmp}/prompts.txt", "--reward", "numeric"],
        ["train", "--data", "{tmp}/good.jsonl"],
        ["train", "--data", "{tmp}/good.jsonl", "--reward", "choice"],
        ["train", "--data", "{tmp}/good.jsonl", "--reward", "nope"],
        ["train", "--task", "offline_math", "--steps", "many"],
        ["train", "--task", "offline_math", "--kl-coef", "0.1", "--beta", "0.2"],
        ["eval"],
        ["eval", "--task", "offline_math", "--expert", "no-equals-sign"],
        ["eval", "--task", "offline_math", "--adapter", "a", "--expert", "m=b"],
        ["generate", "hello"],
        ["generate", "--expert", "math=x", "--dispatcher", "magic", "hello"],
        ["adapt", "--data", "{tmp}/good.jsonl", "--expert", "math=x", "--output-dir", "{tmp}/o"],
        ["adapt", "--data", "{tmp}/bad.jsonl", "--reward", "exact", "--expert", "math=x", "--output-dir", "{tmp}/o"],
        ["push", "{tmp}", "org/name"],
        ["push", "{tmp}"],
    ],
)  # fmt: skip
def test_bad_arguments_give_one_line_and_exit_status_2(argv, tmp_path, capsys):
    (tmp_path / "good.jsonl").write_text('{"prompt": "abc", "answer": "1"}\n')
    (tmp_path / "bad.jsonl").write_text('{"prompt": "abc"\n')
    (tmp_path / "prompts.txt").write_text("abc\n")
    code, out, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = argv[0] if argv[0] in [*COMMANDS, "run"] else None
    assert lines[0].startswith(f"peft-svf {command}: error: " if command else "peft-svf: error: "), lines[0]
    assert "Traceback" not in err


def test_train_on_a_task_writes_adapter_results_and_card(toy_task, model_dir, tmp_path, capsys):
    output = tmp_path / "run"
    code, out, _ = run(
        ["train", "--task", toy_task, "--model", model_dir, "--steps", 2, "--batch", 8, "--lr", 0.3,
         "--eval-steps", 2, "--valid-n", 8, "--test-n", 8, "--temperature", 0.5, "--output-dir", output,
         "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    assert results["settings"]["temperature"] == 0.5
    assert results["task"] == toy_task and results["reward"] == "starts_with" and results["test_n"] == 8
    assert {"base_test_accuracy", "expert_test_accuracy"} <= set(results)
    for which in ("base", "expert"):  # the per-item record behind each accuracy (for confidence intervals)
        items = results[f"{which}_test_items"]
        assert len(items) == 8 and set(items) <= {0, 1}
        assert sum(items) / 8 == results[f"{which}_test_accuracy"]
    assert (output / "expert" / "adapter_config.json").exists()
    assert (output / "expert" / "adapter_model.safetensors").exists()
    card = (output / "expert" / "README.md").read_text()
    assert "peft-svf" in card and toy_task in card and "starts_with" in card and "official" in card
    assert f"{100 * results['expert_test_accuracy']:.1f}%" in card
    assert str(output / "expert") in out


def test_train_samples_several_completions_per_prompt_with_the_chosen_baseline(
    toy_task, model_dir, tmp_path, capsys, monkeypatch
):
    """``--num-generations`` and ``--baseline`` reach the trainer: 4 prompts x 2 samples make each rollout."""
    from peft_svf.trainer import recipe

    seen: dict[str, list] = {"rows": [], "baselines": []}

    class RecordingTrainer(recipe.SVFTrainer):
        def _prepare_inputs(self, inputs):
            rollout = super()._prepare_inputs(inputs)
            seen["rows"].append((len(inputs), rollout["completion_ids"].shape[0]))
            seen["baselines"].append(self.args.advantage_baseline)
            return rollout

    monkeypatch.setattr(recipe, "SVFTrainer", RecordingTrainer)
    output = tmp_path / "run"
    code, _, _ = run(
        ["train", "--task", toy_task, "--model", model_dir, "--steps", 2, "--batch", 4, "--num-generations", 2,
         "--baseline", "leave_one_out", "--lr", 0.3, "--eval-steps", 2, "--valid-n", 4, "--test-n", 0,
         "--output-dir", output, "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0
    assert seen["rows"] == [(4, 8), (4, 8)] and seen["baselines"] == ["leave_one_out"] * 2
    settings = json.loads((output / "results.json").read_text())["settings"]
    assert settings["num_generations"] == 2 and settings["advantage_baseline"] == "leave_one_out"


@pytest.mark.parametrize(
    ("adapter", "task_rate", "expected"), [("svf", None, 1e-2), ("lora", None, 3e-4), ("svf", 7e-3, 7e-3)]
)
def test_train_without_lr_uses_the_recipe_rate_of_the_adapter_kind_and_task(
    adapter, task_rate, expected, toy_task, model_dir, tmp_path, capsys, monkeypatch
):
    """LoRA at SVF's 1e-2 diverges and SVF on offline_math is steadier at 5e-3 (docs/trainer.md), so ``--lr``
    left out means the kind's own rate, or the task's where validation chose one."""
    from peft_svf.trainer import recipe

    if task_rate is not None:  # the toy task given a validated rate of its own, as offline_math has
        monkeypatch.setitem(recipe.TASK_LEARNING_RATES, (adapter, toy_task), task_rate)
    seen = []

    class RecordingTrainer(recipe.SVFTrainer):
        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            seen.append({group["lr"] for group in optimizer.param_groups})
            return optimizer

    monkeypatch.setattr(recipe, "SVFTrainer", RecordingTrainer)
    output = tmp_path / "run"
    code, _, _ = run(
        ["train", "--task", toy_task, "--model", model_dir, "--adapter", adapter, "--steps", 1, "--batch", 4,
         "--eval-steps", 1, "--valid-n", 4, "--test-n", 0, "--output-dir", output, "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0
    assert seen == [{expected}]  # the optimizer's rate at its creation (the schedule starts there)
    assert json.loads((output / "results.json").read_text())["settings"]["lr"] == expected


@pytest.mark.parametrize(
    ("adapter", "flags", "expected"), [("svf", [], 0.05), ("lora", [], 0.02), ("svf", ["--beta", 0.3], 0.3)]
)
def test_train_without_beta_uses_the_recipe_beta_of_the_adapter_kind(
    adapter, flags, expected, toy_task, model_dir, tmp_path, capsys, monkeypatch
):
    """``--beta`` left out means the kind's KL coefficient; the loss is computed with it (the trainer's own
    args) and results.json records it."""
    from peft_svf.trainer import recipe

    monkeypatch.setattr(recipe, "RECIPE_BETAS", {"svf": 0.05, "lora": 0.02})
    seen = []

    class RecordingTrainer(recipe.SVFTrainer):
        def compute_loss(self, *args, **kwargs):
            seen.append(self.args.beta)
            return super().compute_loss(*args, **kwargs)

    monkeypatch.setattr(recipe, "SVFTrainer", RecordingTrainer)
    output = tmp_path / "run"
    code, _, _ = run(
        ["train", "--task", toy_task, "--model", model_dir, "--adapter", adapter, "--steps", 1, "--batch", 4,
         "--eval-steps", 1, "--valid-n", 4, "--test-n", 0, "--output-dir", output, "--quiet", *flags], capsys,
    )  # fmt: skip
    assert code == 0
    assert seen == [expected]
    assert json.loads((output / "results.json").read_text())["settings"]["beta"] == expected


def test_train_on_jsonl_files_with_a_built_in_reward(model_dir, tmp_path, capsys):
    for name, n in (("train", 16), ("valid", 4), ("test", 6)):
        rows = [{"prompt": p, "answer": "e"} for p in prompts(n, seed=n)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "run"
    code, _, _ = run(
        ["train", "--data", tmp_path / "train.jsonl", "--valid-data", tmp_path / "valid.jsonl",
         "--test-data", tmp_path / "test.jsonl", "--reward", "exact", "--model", model_dir, "--steps", 2,
         "--batch", 8, "--eval-steps", 2, "--max-new-tokens", 3, "--output-dir", output, "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    assert results["task"] == "train" and results["reward"] == "exact_reward"
    assert results["test_n"] == 6 and results["settings"]["max_new_tokens"] == 3
    assert results["data"]["valid"].endswith("valid.jsonl")
    # the validation file (4 rows), not the odd half of the training file, was used for validation
    evals = [log for log in results["log_history"] if "eval_samples" in log]
    assert evals and all(log["eval_samples"] == 4 for log in evals)
    card = (output / "expert" / "README.md").read_text()
    assert "exact_reward" in card and "valid.jsonl" in card


def test_eval_prints_the_accuracy_that_evaluate_computes(toy_task, model_dir, experts, tmp_path, capsys):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = evaluate(
        AutoModelForCausalLM.from_pretrained(model_dir), toy_task, tokenizer, n=12, progress=False
    )
    expert_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), str(experts["math"])
    )
    expert = evaluate(expert_model, toy_task, tokenizer, n=12, progress=False)

    code, out, _ = run(["eval", "--task", toy_task, "--model", model_dir, "--n", 12, "--quiet"], capsys)
    assert code == 0
    assert f"accuracy: {base.accuracy:.4f} ({base.correct}/12)" in out
    output = tmp_path / "eval.json"
    code, out, _ = run(
        ["eval", "--task", toy_task, "--model", model_dir, "--n", 12, "--adapter", experts["math"],
         "--compare-base", "--output", output, "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0
    assert f"accuracy: {expert.accuracy:.4f} ({expert.correct}/12)" in out
    assert f"base accuracy: {base.accuracy:.4f}" in out
    saved = json.loads(output.read_text())
    assert saved["accuracy"] == expert.accuracy
    assert [r["completion"] for r in saved["records"]] == [r["completion"] for r in expert.records]


def _self_adaptive(model_dir, experts):
    from peft_svf.adaptive import SelfAdaptiveModel

    return SelfAdaptiveModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), experts={k: str(v) for k, v in experts.items()},
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
    )  # fmt: skip


def test_eval_of_a_self_adaptive_strategy_matches_evaluate(toy_task, model_dir, experts, capsys):
    adaptive_model = _self_adaptive(model_dir, experts)
    expected = evaluate(adaptive_model, toy_task, adaptive_model.tokenizer, n=8, progress=False)
    code, out, _ = run(
        ["eval", "--task", toy_task, "--model", model_dir, "--n", 8, "--expert", f"math={experts['math']}",
         "--expert", f"code={experts['code']}", "--dispatcher", "prompt", "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0 and "self-adaptive (prompt) over math, code" in out
    assert f"accuracy: {expected.accuracy:.4f} ({expected.correct}/8)" in out


def test_generate_prints_the_dispatch_decision(model_dir, experts, capsys):
    from peft_svf.cli.common import as_prompt
    from peft_svf.cli.generate import describe

    adaptive_model = _self_adaptive(model_dir, experts)
    expected = [describe(d) for d in adaptive_model.dispatch([as_prompt(p, adaptive_model.tokenizer) for p in ("abc", "dcba")])]
    code, out, _ = run(
        ["generate", "--model", model_dir, "--expert", f"math={experts['math']}", "--expert",
         f"code={experts['code']}", "--max-new-tokens", 4, "abc", "dcba"], capsys,
    )  # fmt: skip
    assert code == 0
    assert out.count("[dispatch: ") == 2
    assert expected[0] in out and expected[1] in out
    assert ">>> abc" in out and ">>> dcba" in out
    assert "math=" in expected[0] and "code=" in expected[0]


def test_chat_answers_each_turn_with_its_decision(model_dir, experts, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("abc\ndef\n/exit\n"))
    code, out, _ = run(
        ["chat", "--model", model_dir, "--expert", f"math={experts['math']}", "--expert", f"code={experts['code']}",
         "--max-new-tokens", 3], capsys,
    )  # fmt: skip
    assert code == 0
    assert out.count("[dispatch: ") == 2 and out.count("model> ") == 2


def test_adapt_writes_the_mixture_as_an_adapter(model_dir, experts, tmp_path, capsys):
    data = tmp_path / "few_shot.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "e"}) + "\n" for p in prompts(4)))
    output = tmp_path / "adapted"
    code, out, _ = run(
        ["adapt", "--model", model_dir, "--expert", f"math={experts['math']}", "--expert", f"code={experts['code']}",
         "--data", data, "--reward", "exact", "--population-size", 4, "--generations", 1, "--max-new-tokens", 2,
         "--output-dir", output, "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0
    assert (output / "adapter_config.json").exists() and (output / "adapter_model.safetensors").exists()
    results = json.loads((output / "results.json").read_text())
    assert results["method"] == "cem" and set(results["alpha"]) == {"math", "code"}
    assert results["experts"] == {k: str(v) for k, v in experts.items()}
    assert "cross-entropy method" in (output / "README.md").read_text()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(output))
    assert isinstance(reloaded.peft_config["default"], SVFConfig)
    assert '"score"' in out


def test_data_files_in_every_format_read_the_same(tmp_path):
    from peft_svf.cli.common import read_table

    rows = [{"question": "1+1", "answer": "2"}, {"question": "2+3", "answer": "5"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("question,answer\n1+1,2\n2+3,5\n")
    Dataset.from_list(rows).to_parquet(tmp_path / "d.parquet")
    for suffix in ("jsonl", "json", "csv", "parquet"):
        data = read_table(tmp_path / f"d.{suffix}", prompt_column="question")
        assert set(data.column_names) == {"prompt", "answer"}
        assert data["prompt"] == ["1+1", "2+3"] and data["answer"] == ["2", "5"], suffix
