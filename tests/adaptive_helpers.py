"""Shared pieces of the self-adaptive tests (no tests here): a tiny chat LM with three random SVF experts, state snapshots."""

from __future__ import annotations

import torch
from peft import get_peft_model

from peft_svf import SVFConfig
from peft_svf.adaptive import DispatchDecision, Dispatcher
from peft_svf.adaptive.mixing import svf_layers
from tasks_tiny_lm import tiny_chat_lm

EXPERTS = ["math", "code", "reasoning"]
WORDS = ["what", "is", "two", "plus", "three", "write", "a", "function", "which", "letter", "largest", "the",
         "answer", "math", "code", "reasoning", "others", "Classification", "\\", "boxed", "{", "}"]  # fmt: skip


def tiny_experts(parameterization: str = "official", noise: float = 0.5, seed: int = 0, **config):
    """(PeftModel with experts math/code/reasoning of random vectors, tokenizer)."""
    model, tokenizer = tiny_chat_lm(WORDS, seed=seed)
    peft_model = None
    for i, name in enumerate(EXPERTS):
        torch.manual_seed(100 + i)
        cfg = SVFConfig(parameterization=parameterization, init_noise_std=noise, **config)
        if peft_model is None:
            peft_model = get_peft_model(model, cfg, adapter_name=name)
        else:
            peft_model.add_adapter(name, cfg)
    return peft_model.eval(), tokenizer


class ScriptedDispatcher(Dispatcher):
    """Pass 1 replaced by a table: prompt text -> decision (tests pass 2 independently of pass 1)."""

    def __init__(self, table: dict[str, DispatchDecision]) -> None:
        self.table = table

    def dispatch(self, prompts):
        from peft_svf.prompts import question_of

        return [self.table[question_of(p)] for p in prompts]


def one_hot(label: str | None) -> DispatchDecision:
    if label is None:
        return DispatchDecision("others", dict.fromkeys(EXPERTS, 0.0), base=1.0)
    return DispatchDecision(label, {e: float(e == label) for e in EXPERTS})


def snapshot(model) -> dict:
    """Everything self-adaptive inference must leave as it found it."""
    layers = svf_layers(model)
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "weight_storage": [layer.get_base_layer().weight.data_ptr() for layer in layers.values()],
        "active": model.base_model.active_adapter,
        "configs": list(model.peft_config),
        "vectors": [sorted(layer.svf_vector) for layer in layers.values()],
        "other": [(dict(layer.svf_parameterization), dict(layer.svf_max_mult)) for layer in layers.values()],
        "disabled": [layer.disable_adapters for layer in layers.values()],
        "merged": [list(layer.merged_adapters) for layer in layers.values()],
        "training": [m.training for m in model.modules()],
        "grads": [p.requires_grad for p in model.parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for key in before:
        if key != "state":
            assert before[key] == after[key], key
