"""Mixed-adapter batches: each row with its own SVF adapter (or none), in one pass."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_svf import SVFConfig
from tiny_models import make_tiny_llama


def model_with_two_experts(keep_base_weight: bool = True):
    model = get_peft_model(
        make_tiny_llama(), SVFConfig(keep_base_weight=keep_base_weight), adapter_name="math"
    )
    model.add_adapter("code", SVFConfig(keep_base_weight=keep_base_weight))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "svf_vector" in name:
                param.add_(torch.randn(param.shape, generator=generator))
    return model.eval()


def one_by_one(model, input_ids, rows, fn):
    outputs = []
    for row, name in zip(input_ids, rows, strict=True):
        if name == "__base__":
            with model.disable_adapter():
                outputs.append(fn(row[None]))
        else:
            model.set_adapter(name)
            outputs.append(fn(row[None]))
    return torch.cat(outputs)


@pytest.mark.parametrize("keep_base_weight", [True, False])
def test_mixed_batch_logits_match_one_prompt_at_a_time(keep_base_weight):
    model = model_with_two_experts(keep_base_weight)
    input_ids = torch.randint(0, 96, (4, 7), generator=torch.Generator().manual_seed(3))
    rows = ["math", "code", "__base__", "math"]
    with torch.no_grad():
        mixed = model(input_ids, adapter_names=rows).logits
        expected = one_by_one(model, input_ids, rows, lambda ids: model(ids).logits)
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-5)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the experts really differ


def test_mixed_batch_greedy_generation_matches_one_prompt_at_a_time():
    model = model_with_two_experts()
    input_ids = torch.randint(0, 96, (3, 6), generator=torch.Generator().manual_seed(4))
    rows = ["code", "__base__", "math"]
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        mixed = model.generate(input_ids=input_ids, adapter_names=rows, **kwargs)
        expected = one_by_one(model, input_ids, rows, lambda ids: model.generate(input_ids=ids, **kwargs))
    assert torch.equal(mixed, expected)


def test_mixed_batch_errors():
    model = model_with_two_experts()
    input_ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(input_ids, adapter_names=["math", "typo"])
    with pytest.raises(ValueError, match="2 rows"):
        model(input_ids, adapter_names=["math"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(input_ids, adapter_names=["math", "code"])
