"""A TRL user keeps their trainer: GRPOTrainer and RLOOTrainer (and SFTTrainer, test_trainer_sft.py) train SVF.

Each test passes ``peft_config=SVFConfig(...)`` to the TRL trainer on a tiny Llama, checks that the
vectors change and that the reward (or loss) moves the right way, and that ``save_model`` writes a PEFT
adapter which ``PeftModel.from_pretrained`` reloads with bit-identical vectors and outputs.

The last tests cover our half of vLLM rollouts (vLLM itself cannot run here): TRL's weight sync, run with
the vLLM engine replaced by a recorder, must push exactly the names and values of ``merge_and_unload()``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import trl
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase
from trl.generation.vllm_generation import VLLMGeneration

from peft_svf import SVFConfig
from trainer_fixtures import (
    adapter_config,
    adapter_state,
    prompts,
    tiny_llama,
    tiny_tokenizer,
)

COMMON = {
    "report_to": [],
    "use_cpu": True,
    "bf16": False,
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
}
COMMON.update(disable_tqdm=True, max_completion_length=4, per_device_train_batch_size=16, learning_rate=0.3)
COMMON.update(lr_scheduler_type="constant")


def starts_with_digit(completions: list[str], **kwargs: Any) -> list[float]:
    """+1 for a completion that starts with a digit, else -1 (the tiny base starts about a fifth so)."""
    return [1.0 if text[:1].isdigit() else -1.0 for text in completions]


def digit_probability(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[str]) -> float:
    """Mean probability that a completion of these (plain-text) prompts starts with a digit: the reward's aim."""
    ids = tokenizer(rows, return_tensors="pt")["input_ids"]  # all prompts have the same length: no padding
    with torch.no_grad():
        probabilities = model(input_ids=ids).logits[:, -1].float().softmax(-1)
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    return probabilities[:, digits].sum(-1).mean().item()


def assert_trained_and_reloads(
    trainer: Any, before: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase, folder: Path
) -> PeftModel:
    """Every SVF vector moved, the base did not, and the saved adapter reloads bit for bit."""
    model = trainer.model
    after = adapter_state(model)
    assert after.keys() == before.keys() and after and all(".svf_vector." in name for name in after)
    assert all(not torch.equal(before[name], value) for name, value in after.items())
    base = tiny_llama(len(tokenizer))  # the same seed: the trainer's frozen base, untouched by training
    frozen = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in model.named_parameters()
              if not p.requires_grad}  # fmt: skip
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters())

    trainer.save_model(str(folder))
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "SVF"
    reloaded = PeftModel.from_pretrained(base, str(folder)).eval()
    reloaded_vectors = {n: p for n, p in reloaded.named_parameters() if ".svf_vector." in n}
    assert reloaded_vectors.keys() == after.keys()
    assert all(torch.equal(reloaded_vectors[n], after[n]) for n in after)
    ids = tokenizer(prompts(4, seed=7), return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    return reloaded


@pytest.mark.parametrize(
    ("trainer_class", "config_class", "settings"),
    [
        # GRPO: group-mean baseline over 4 completions per prompt, the KL to the base with the adapter disabled.
        (trl.GRPOTrainer, trl.GRPOConfig, {"num_generations": 4, "beta": 0.1}),
        # RLOO: leave-one-out baseline, its default KL (beta 0.05) in the reward.
        (trl.RLOOTrainer, trl.RLOOConfig, {"num_generations": 4}),
    ],
    ids=["GRPOTrainer", "RLOOTrainer"],
)
def test_trl_rl_trainer_trains_svf_vectors(tmp_path, trainer_class, config_class, settings):
    tokenizer = tiny_tokenizer()
    rows = prompts(32)
    trainer = trainer_class(
        model=tiny_llama(len(tokenizer)),
        reward_funcs=starts_with_digit,
        args=config_class(output_dir=str(tmp_path / "run"), max_steps=8, **COMMON, **settings),
        train_dataset=Dataset.from_dict({"prompt": rows}),
        processing_class=tokenizer,
        peft_config=adapter_config("svf"),
    )
    assert isinstance(trainer.model, PeftModel) and trainer.model.peft_type == "SVF"
    before = adapter_state(trainer.model)
    probability_before = digit_probability(trainer.model, tokenizer, rows)
    trainer.train()

    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 8
    assert sum(rewards[4:]) > sum(rewards[:4]), rewards  # the logged (sampled) reward rose
    reloaded = assert_trained_and_reloads(trainer, before, tokenizer, tmp_path / "adapter")
    # The expected reward of the policy, exactly: 2 P(first token is a digit) - 1 (measured: 0.19 -> 0.47-0.51).
    probability_after = digit_probability(reloaded, tokenizer, rows)
    assert probability_after > probability_before + 0.2, (probability_before, probability_after)


class _RecordingVLLM:
    """Stands in for ``vllm.LLM`` in colocate mode: records what TRL's ``sync_weights`` loads into it."""

    def __init__(self) -> None:
        self.loaded: dict[str, torch.Tensor] = {}
        self.llm_engine = self  # sync_weights reaches the model as llm.llm_engine.model_executor...model
        self.model_executor = self.driver_worker = self.model_runner = self.model = self

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in weights:
            assert name not in self.loaded, f"{name} pushed twice"
            self.loaded[name] = tensor.detach().clone()

    def reset_prefix_cache(self) -> None:
        pass


def _sync_through_trl(model: PeftModel, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """TRL's own ``VLLMGeneration.sync_weights`` (colocate mode), with only the vLLM engine replaced."""
    from accelerate import Accelerator

    monkeypatch.setattr(VLLMGeneration, "_init_vllm", lambda self: None)  # the engine cannot start here
    generation = VLLMGeneration(model, Accelerator(cpu=True), tiny_tokenizer(), mode="colocate")
    generation.llm = _RecordingVLLM()
    generation.sync_weights()
    return generation.llm.loaded


def _svf_model(**config: Any) -> PeftModel:
    tokenizer = tiny_tokenizer()
    settings = {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "svd_cache": False,
        "init_noise_std": 0.5,
    }
    model = get_peft_model(tiny_llama(len(tokenizer)), SVFConfig(**{**settings, **config}))
    for parameter in model.parameters():
        if parameter.requires_grad:  # a trained-looking vector, not the identity
            parameter.data.add_(torch.randn_like(parameter))
    return model


@pytest.mark.parametrize(
    "config",
    [{}, {"modules_to_save": ["lm_head"]}, {"keep_base_weight": False}],
    ids=["svf", "modules_to_save", "keep_base_weight_false"],
)
def test_trl_vllm_weight_sync_pushes_the_merged_model(monkeypatch, config):
    model = _svf_model(**config)
    if "modules_to_save" in config:  # a trained copy of lm_head, which must be the one pushed
        model.base_model.model.lm_head.modules_to_save["default"].weight.data.mul_(2)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    vectors = adapter_state(model)

    pushed = _sync_through_trl(model, monkeypatch)

    assert pushed.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(pushed[name], value), name
    # The sync unmerges afterwards: the model trains on from where it was.
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert all(torch.equal(p, vectors[n]) for n, p in adapter_state(model).items())


def test_trl_vllm_weight_sync_with_freed_base_weights_pushes_no_empty_weight(monkeypatch):
    # keep_base_weight=False frees W; the active adapter adapts q_proj only, so v_proj and down_proj have nothing
    # to merge. Before merge() rebuilt their W from its factors, TRL pushed them as empty (0,) tensors.
    model = _svf_model(keep_base_weight=False)
    only_q = SVFConfig(target_modules=["q_proj"], svd_cache=False, init_noise_std=0.5, keep_base_weight=False)
    model.add_adapter("q_only", only_q)
    model.set_adapter("q_only")
    expected = copy.deepcopy(model).merge_and_unload().state_dict()

    with pytest.warns(UserWarning, match="Already unmerged"):  # PEFT unmerges every layer, merged or not
        pushed = _sync_through_trl(model, monkeypatch)

    assert pushed.keys() == expected.keys()
    assert all(value.numel() > 0 for value in pushed.values())
    assert all(torch.equal(pushed[name], value) for name, value in expected.items())
    # After the sync every freed weight is freed again: keep_base_weight=False still saves the memory.
    freed = [m.get_base_layer().weight for m in model.modules() if getattr(m, "frees_base_weight", False)]
    assert len(freed) == 6 and all(weight.numel() == 0 for weight in freed)
