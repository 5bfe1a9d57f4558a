"""Mixed-adapter batches: each row with its own SVF adapter (or none), in one pass."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from adaptive_helpers import assert_same_state, snapshot
from peft_svf import SVFConfig
from peft_svf.adaptive.generation import routed_generate
from peft_svf.adaptive.mixing import svf_layers
from peft_svf.svf.mixed_batch import per_row_adapters
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


def three_row_generation() -> tuple:
    """Two experts, three prompts (code, no adapter, math) and greedy settings forcing 6 new tokens."""
    input_ids = torch.randint(0, 96, (3, 6), generator=torch.Generator().manual_seed(4))
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    return model_with_two_experts(), input_ids, ["code", "__base__", "math"], kwargs


def test_mixed_batch_greedy_generation_matches_one_prompt_at_a_time():
    model, input_ids, rows, kwargs = three_row_generation()
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


# -- per-row plans: exact changes computed once, or each row's best low-rank change --------------------------

MANY_ROWS = [
    "math",
    "code",
    "__base__",
    "math",
    "code",
    "code",
]  # a few adapters in any order: stacked layout
RUNS = ["math"] * 4 + ["code"] * 4 + ["__base__"] * 4  # long equal runs of one adapter: grouped layout


def row_layouts(model, input_ids, rows, rank):
    """(logits, the set of layouts the layers chose) under ``per_row_adapters(model, rank)``."""
    with per_row_adapters(model, rank):
        logits = model(input_ids, adapter_names=rows).logits
        layouts = {type(layer.row_plans._last).__name__ for layer in svf_layers(model).values()}
    return logits, layouts


@pytest.mark.parametrize(
    ("rows", "layout"), [(MANY_ROWS, "StackedLowRankRows"), (RUNS, "GroupedLowRankRows")]
)
def test_low_rank_rows_at_full_rank_equal_the_exact_per_row_path(rows, layout):
    model = model_with_two_experts()
    input_ids = torch.randint(0, 96, (len(rows), 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        exact = model(input_ids, adapter_names=rows).logits
        planned, layouts = row_layouts(model, input_ids, rows, None)
        full, full_layouts = row_layouts(model, input_ids, rows, 10**6)
        energy, _ = row_layouts(model, input_ids, rows, 1.0)
    assert torch.equal(planned, exact) and layouts == {"ExactRows"}  # the exact plan changes no bit
    assert full_layouts == {layout}
    torch.testing.assert_close(full, exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(energy, exact, atol=1e-5, rtol=1e-5)


def truncated_reference(layer, name: str, rank: int) -> torch.Tensor:
    """Dense ``W + Δ_k`` of adapter ``name`` in float64, Δ_k its ``rank`` largest components by |s (g - 1)|."""
    weight = layer.get_base_layer().weight.detach().double()
    if name == "__base__":
        return weight
    change = layer.svf_S.double() * (layer.gain(name).double() - 1)
    keep = torch.topk(change.abs(), min(rank, change.numel())).indices
    U, Vh = layer.svf_U.double()[:, keep], layer.svf_Vh.double()[keep]
    return weight + (U * change[keep]) @ Vh


@pytest.mark.parametrize("rows", [MANY_ROWS, RUNS])
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_each_low_rank_row_is_its_experts_truncated_change(rows, rank):
    model = model_with_two_experts()
    x = torch.randn(len(rows), 5, 32, generator=torch.Generator().manual_seed(6))
    layer = svf_layers(model)["model.layers.0.self_attn.q_proj"]
    with torch.no_grad(), per_row_adapters(model, rank):
        out = layer(x, adapter_names=rows)
    for i, name in enumerate(rows):
        expected = x[i].double() @ truncated_reference(layer, name, rank).T
        torch.testing.assert_close(out[i].double(), expected, atol=1e-5, rtol=1e-5)
    if rank < layer.rank:  # the truncation really drops something
        assert not torch.allclose(
            out[0].double(), x[0].double() @ truncated_reference(layer, "math", 10**6).T
        )


def test_low_rank_base_rows_equal_the_base_and_generation_matches_full_rank():
    model, input_ids, rows, kwargs = three_row_generation()
    with torch.no_grad():
        low, _ = row_layouts(model, input_ids, rows, 2)
        with model.disable_adapter():
            base = model(input_ids[1:2]).logits
        exact = routed_generate(model, rows, input_ids=input_ids, **kwargs)
        full = routed_generate(model, rows, per_row_rank=10**6, input_ids=input_ids, **kwargs)
    torch.testing.assert_close(low[1:2], base, atol=1e-6, rtol=1e-6)
    assert torch.equal(full, exact)


def test_per_row_plans_leave_the_model_as_found_also_after_an_error():
    model = model_with_two_experts()
    before = snapshot(model)
    input_ids = torch.randint(0, 96, (2, 4), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        routed_generate(model, ["math", "code"], per_row_rank=4, input_ids=input_ids, max_new_tokens=3,
                        do_sample=False, pad_token_id=0)  # fmt: skip
        with pytest.raises(RuntimeError, match="inside"), per_row_adapters(model, 4):
            model(input_ids, adapter_names=["math", "code"])
            raise RuntimeError("inside")
    assert all(layer.row_plans is None for layer in svf_layers(model).values())
    assert_same_state(before, snapshot(model))


def test_per_row_rank_errors():
    model = model_with_two_experts()
    input_ids = torch.zeros(2, 3, dtype=torch.long)
    for rank, error in [(0, ValueError), (1.5, ValueError), (True, TypeError), ("8", TypeError)]:
        with pytest.raises(error), per_row_adapters(model, rank):
            model(input_ids, adapter_names=["math", "code"])
