"""``inference_in``: a loaded expert scored in bf16 mixed precision (the main job's unseen tasks), nothing kept.

The reference is an independent bf16 model: the expert merged by PEFT's ``merge_and_unload`` in float32, the
model cast with ``.to(torch.bfloat16)`` (rotary frequencies put back in float32), run under autocast.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from peft_svf.pipeline import strategies
from peft_svf.pipeline.config import FULL, parse_args
from peft_svf.precision import SVF_FACTORS, fast_bf16, inference_in
from peft_svf.svf.merging import merged_for_inference
from trainer_fixtures import save_random_experts, save_tiny_model, tiny_llama, tiny_tokenizer

VOCAB = len(tiny_tokenizer())
IDS = torch.tensor([[5, 9, 14, 3, 22, 7], [11, 4, 8, 30, 2, 19]])


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experts")
    return save_random_experts(save_tiny_model(root / "model"), root)


def loaded(experts: dict[str, Path]) -> PeftModel:
    """Both experts loaded for inference (``is_trainable=False``: their vectors are frozen parameters)."""
    model = PeftModel.from_pretrained(tiny_llama(VOCAB), str(experts["math"]), adapter_name="math")
    model.load_adapter(str(experts["code"]), adapter_name="code")
    return model.eval()


def tensors(model: torch.nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    """Each parameter's and buffer's storage address and a copy of its values."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: (t.data_ptr(), t.detach().clone()) for name, t in named}


def assert_unchanged(model: torch.nn.Module, before: dict[str, tuple[int, torch.Tensor]]) -> None:
    now = tensors(model)
    assert now.keys() == before.keys()
    for name, (address, values) in before.items():
        assert now[name][0] == address, name
        assert now[name][1].dtype == values.dtype and torch.equal(now[name][1], values), name


def bf16_reference(model: PeftModel, adapter: str) -> torch.nn.Module:
    reference = copy.deepcopy(model)
    reference.set_adapter(adapter)
    reference = reference.merge_and_unload()
    buffers = {name: b.clone() for name, b in reference.named_buffers()}
    reference.to(torch.bfloat16)
    for name, b in reference.named_buffers():
        b.data = buffers[name]
    return reference


def test_weights_and_factors_are_bf16_inside_vectors_stay_float32_and_every_tensor_comes_back(experts):
    model = loaded(experts)
    before = tensors(model)
    with pytest.raises(RuntimeError, match="inside"), inference_in(model, torch.bfloat16):
        for name, param in model.named_parameters():
            assert not param.requires_grad
            expected = torch.float32 if ".svf_vector." in name else torch.bfloat16
            assert param.dtype == expected, name
        for name, buffer in model.named_buffers():
            if name.rsplit(".", 1)[-1] in SVF_FACTORS:
                torch.testing.assert_close(buffer, before[name][1].to(torch.bfloat16), rtol=0, atol=0)
            else:  # singular values, rotary frequencies
                assert buffer.dtype == torch.float32, name
        assert torch.is_autocast_enabled("cpu")
        raise RuntimeError("inside")
    assert_unchanged(model, before)
    assert not torch.is_autocast_enabled("cpu")
    with inference_in(model, None):
        assert_unchanged(model, before)
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "factored"])
def test_an_expert_inside_scores_as_the_independently_merged_bf16_model(experts, merge):
    model = loaded(experts)
    model.set_adapter("code")
    before = tensors(model)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = bf16_reference(model, "code")(IDS).logits.float()
        with model.disable_adapter():
            base = model(IDS).logits
        with inference_in(model, torch.bfloat16), merged_for_inference(model) if merge else nullcontext(False) as did:
            got = model(IDS).logits
    assert did is merge and got.dtype == torch.bfloat16
    assert_unchanged(model, before)
    error = (got.float() - expected).abs().max().item()
    effect = (base - expected).abs().max().item()
    assert error < 0.05 * effect, (error, effect)  # bf16 rounding, far below what the expert changes


def test_a_mixture_saved_inside_is_the_one_saved_outside(experts, tmp_path):
    model = loaded(experts)
    model.base_model.add_weighted_adapter(["math", "code"], [0.3, 0.6], "mix_outside")
    model.save_pretrained(str(tmp_path / "outside"), selected_adapters=["mix_outside"])
    with inference_in(model, torch.bfloat16):
        model.base_model.add_weighted_adapter(["math", "code"], [0.3, 0.6], "mix_inside")
        model.save_pretrained(str(tmp_path / "inside"), selected_adapters=["mix_inside"])
    outside = load_file(tmp_path / "outside" / "mix_outside" / "adapter_model.safetensors")
    inside = load_file(tmp_path / "inside" / "mix_inside" / "adapter_model.safetensors")
    assert outside.keys() == inside.keys() and outside
    for key, value in outside.items():
        assert value.dtype == torch.float32 and torch.equal(value, inside[key]), key


class _FakeAdaptive:
    def __init__(self, model: PeftModel) -> None:
        self.model = model


@pytest.mark.parametrize("unseen_bf16", [True, False, None])
def test_the_unseen_stage_runs_in_its_precision(experts, monkeypatch, unseen_bf16):
    model = loaded(experts)
    weight = model.base_model.model.model.layers[0].mlp.up_proj.base_layer.weight
    seen = []

    def one_task(config, adaptive_models, task_name, tokenizer):
        seen.append((task_name, weight.dtype, torch.is_autocast_enabled("cpu")))
        return {"base": {"accuracy": 0.0}}

    monkeypatch.setattr(strategies, "_unseen_task", one_task)
    config = replace(FULL, unseen_bf16=unseen_bf16)
    table = strategies.evaluate_unseen(config, {strategies.PROMPT: _FakeAdaptive(model)}, None)
    bf16 = fast_bf16() if unseen_bf16 is None else unseen_bf16
    expected = (torch.bfloat16, True) if bf16 else (torch.float32, False)
    assert seen == [(task, *expected) for task in FULL.unseen_tasks]
    assert list(table) == list(FULL.unseen_tasks)
    assert weight.dtype == torch.float32
    assert config.to_dict()["unseen_bf16"] is bf16  # as run, also where the default chose


def test_the_unseen_bf16_flag():
    assert parse_args([]).unseen_bf16 is None
    assert parse_args(["--unseen-bf16"]).unseen_bf16 is True
    assert parse_args(["--no-unseen-bf16"]).unseen_bf16 is False
