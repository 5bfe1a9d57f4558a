"""merged_for_inference: the adapter in the dense weights for a block, the original tensors back after."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from peft_svf import SVFConfig
from peft_svf.svf.layer import SVFLayer
from peft_svf.svf.merging import mergeable, merged_for_inference, worth_merging
from tiny_models import make_tiny_llama


def weights(model) -> dict[str, tuple[tuple[int, tuple[int, ...]], torch.Tensor]]:
    """Every base parameter: (where its tensor's memory is, and its shape; a copy of its values)."""
    return {
        n: ((p.data_ptr(), tuple(p.shape)), p.detach().clone())
        for n, p in model.named_parameters()
        if "svf_" not in n and "lora_" not in n
    }


def adapted(config, dtype=torch.float32, tied: bool = False):
    base = make_tiny_llama().to(dtype)
    if tied:
        base.lm_head.weight = base.model.embed_tokens.weight
    model = get_peft_model(base, config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "config",
    [SVFConfig(), SVFConfig(keep_base_weight=False), LoraConfig(r=4, target_modules=["q_proj", "down_proj"])],
    ids=["svf", "svf-freed", "lora"],
)
def test_merged_block_computes_the_adapted_model_and_leaves_the_same_tensors(config, dtype, input_ids):
    model = adapted(config, dtype)
    with torch.no_grad():
        expected = model(input_ids).logits
        before = weights(model)
        for _ in range(3):  # repeated rounds: PEFT's W + Δ - Δ would drift
            with merged_for_inference(model) as merged:
                assert merged and all(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
                got = model(input_ids).logits
        after = weights(model)
    for name, (tensor, values) in before.items():
        assert after[name][0] == tensor, name  # the very tensor, not a copy written back
        assert torch.equal(after[name][1], values), name
    assert not any(getattr(m, "merged", False) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, expected)
    tolerance = 1e-4 if dtype == torch.float32 else 0.15  # a merged bf16 weight rounds W + Δ once
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    with torch.no_grad(), model.disable_adapter():
        assert (got - model(input_ids).logits).abs().max() > 1e-3  # the block really adapted


def test_original_tensors_come_back_after_an_error(input_ids):
    model = adapted(SVFConfig())
    before = weights(model)
    with pytest.raises(RuntimeError, match="boom"), merged_for_inference(model):
        raise RuntimeError("boom")
    assert all(weights(model)[n][0] == tensor for n, (tensor, _) in before.items())
    assert not any(m.merged for m in model.modules() if isinstance(m, SVFLayer))


def test_tied_or_quantised_weights_run_unmerged(input_ids, monkeypatch):
    tied = adapted(SVFConfig(target_modules=["lm_head", "q_proj"]), tied=True)
    assert tied.base_model.model.lm_head.weight is tied.base_model.model.model.embed_tokens.weight
    assert not mergeable(tied, "default")
    with torch.no_grad():
        expected = tied(input_ids).logits
        with merged_for_inference(tied) as merged:
            assert not merged
            assert torch.equal(tied(input_ids).logits, expected)
    model = adapted(SVFConfig())
    layer = next(m for m in model.modules() if isinstance(m, SVFLayer))
    monkeypatch.setattr(layer, "quantization_backend", object())  # as a quantised base would have
    assert not mergeable(model, "default")


def test_merging_pays_only_for_enough_tokens(input_ids):
    model = adapted(SVFConfig())
    assert not worth_merging(model, "default", tokens=4) and worth_merging(model, "default", tokens=10_000)
    before = weights(model)
    with merged_for_inference(model, tokens=4) as merged:
        assert not merged
        assert all(weights(model)[n][0] == tensor for n, (tensor, _) in before.items())
    with merged_for_inference(model, tokens=10_000) as merged:
        assert merged


def test_an_already_merged_adapter_is_refused():
    model = adapted(SVFConfig())
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged already"), merged_for_inference(model):
        pass
