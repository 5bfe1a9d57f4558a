"""Mixed precision (``bf16=True``): rollouts in bfloat16 with the frozen weights cast once, weights kept exact.

The reference for a rollout is an independent bfloat16 copy of the model: the adapter merged by PEFT's
``merge_and_unload``, the model cast with ``.to(torch.bfloat16)`` (its rotary frequencies put back in float32),
greedy ``generate`` under autocast.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from peft_svf.precision import SVF_FACTORS, contiguous_head_input, factors_in, frozen_weights_in
from trainer_fixtures import make_trainer, prompts, tiny_llama, tiny_tokenizer


def tied_llama() -> LlamaForCausalLM:
    """A tiny Llama whose output head shares the input embeddings (as SmolLM2's does)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def snapshot(model: torch.nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    """Each parameter's storage address and a copy of its values."""
    return {name: (p.data_ptr(), p.data.clone()) for name, p in model.named_parameters(remove_duplicate=False)}


def assert_same_tensors(model: torch.nn.Module, before: dict[str, tuple[int, torch.Tensor]]) -> None:
    for name, p in model.named_parameters(remove_duplicate=False):
        address, values = before[name]
        assert p.data_ptr() == address, name
        assert p.dtype == values.dtype and torch.equal(p.data, values), name


def test_frozen_weights_are_cast_inside_and_the_same_tensors_come_back():
    model = tied_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)  # stands for a trainable adapter
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    before = snapshot(model)
    with frozen_weights_in(model, torch.bfloat16):
        for name, p in model.named_parameters():
            assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
        assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, cast once
        for name, b in model.named_buffers():
            assert b.dtype == buffers[name].dtype, name
    assert_same_tensors(model, before)
    with pytest.raises(RuntimeError, match="inside"), frozen_weights_in(model, torch.bfloat16):
        raise RuntimeError("inside")
    assert_same_tensors(model, before)
    with frozen_weights_in(model, None):
        assert_same_tensors(model, before)


def test_contiguous_head_input_computes_the_same_logits_and_takes_its_hook_away():
    model, ids = tiny_llama(len(tiny_tokenizer())), torch.randint(2, 30, (3, 9))
    with torch.no_grad():
        expected = model(input_ids=ids, logits_to_keep=4).logits
        with contiguous_head_input(model):
            got = model(input_ids=ids, logits_to_keep=4).logits
    assert not model.lm_head._forward_pre_hooks
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_contiguous_head_input_makes_the_input_contiguous():
    model, ids = tiny_llama(len(tiny_tokenizer())), torch.randint(2, 30, (3, 9))
    seen = []
    with torch.no_grad(), contiguous_head_input(model):
        model.lm_head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
        model(input_ids=ids, logits_to_keep=4)
    assert seen == [True]


def test_bf16_rollouts_are_the_bf16_merged_model_greedy_and_leave_the_weights_exact(tmp_path):
    trainer = make_trainer(str(tmp_path), bf16=True, use_cpu=True, max_completion_length=6)
    model = trainer.model
    with torch.no_grad():  # off the identity, so that the merged adapter matters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    before = snapshot(model)
    rows = [{"prompt": p} for p in prompts(8, seed=3)]
    head_dtypes = []  # what the rollout's forwards ran on
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: head_dtypes.append((module.weight.dtype, out.dtype)))
    rollout = trainer._generate(rows, num_generations=1, sample=False)
    handle.remove()
    assert set(head_dtypes) == {(torch.bfloat16, torch.bfloat16)}
    assert_same_tensors(model, before)

    reference = copy.deepcopy(model).merge_and_unload()
    buffers = {name: b.clone() for name, b in reference.named_buffers()}
    reference.to(torch.bfloat16)
    for name, b in reference.named_buffers():  # the rotary frequencies stay float32, as in the rollout
        b.data = buffers[name]
    prompt_texts = [row["prompt"] for row in rows]
    enc = trainer.processing_class(prompt_texts, return_tensors="pt")  # all prompts have the same length
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)[:, enc.input_ids.size(1) :]
    mask = rollout["completion_mask"].bool()
    assert torch.equal(rollout["completion_ids"][mask], expected[: mask.size(0), : mask.size(1)][mask])


def factor_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in SVF_FACTORS}


def test_factors_are_cast_inside_and_the_same_tensors_come_back(tmp_path):
    model = make_trainer(str(tmp_path)).model
    before = {name: (b.data_ptr(), b.clone()) for name, b in factor_buffers(model).items()}
    singular_values = {name: b for name, b in model.named_buffers() if name.endswith("svf_S")}
    assert before and singular_values
    with pytest.raises(RuntimeError, match="inside"), factors_in(model, torch.bfloat16):
        for name, b in factor_buffers(model).items():
            torch.testing.assert_close(b, before[name][1].to(torch.bfloat16), rtol=0, atol=0)
        assert all(b.dtype == torch.float32 for b in singular_values.values())
        raise RuntimeError("inside")
    for name, b in factor_buffers(model).items():
        assert b.data_ptr() == before[name][0] and torch.equal(b, before[name][1]), name


class FactorDtypes(TrainerCallback):
    def __init__(self) -> None:
        self.seen: set[torch.dtype] = set()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen |= {b.dtype for b in factor_buffers(model).values()}


def test_a_bf16_training_updates_only_the_vectors_and_leaves_no_trace_in_weights_or_saved_config(tmp_path):
    trainer = make_trainer(str(tmp_path), bf16=True, use_cpu=True, max_steps=2, beta=0.1)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    vectors = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    factors = {name: (b.data_ptr(), b.clone()) for name, b in factor_buffers(trainer.model).items()}
    dtypes = FactorDtypes()
    trainer.add_callback(dtypes)
    trainer.train()
    assert dtypes.seen == {torch.bfloat16}  # cast once for the training, not at each forward
    for name, p in trainer.model.named_parameters():
        assert p.dtype == torch.float32, name
        if p.requires_grad:
            assert torch.isfinite(p).all() and not torch.equal(p, vectors[name]), name
        else:
            assert torch.equal(p, frozen[name]), name
    for name, b in factor_buffers(trainer.model).items():
        assert b.data_ptr() == factors[name][0] and torch.equal(b, factors[name][1]), name
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)
    trainer.save_model(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["factors_dtype"] is None
