"""Mixing SVF experts (paper 3.2 C): the mixed adapter against an independent float64 computation."""

from __future__ import annotations

import pytest
import torch

from adaptive_helpers import EXPERTS, tiny_experts
from peft_svf.adaptive import BASE, mix_svf_adapters, temporary_mixtures
from peft_svf.adaptive.mixing import svf_layers


def reference_output(layer, x, alpha, parameterization, init_value=0.1):
    """``x W'^T + b`` in float64 with W' built from the experts' raw vectors by the paper's formulas."""
    s = layer.svf_S.double()
    weights = {k: (v[layer.module_name] if isinstance(v, dict) else v) for k, v in alpha.items()}
    if parameterization == "official":
        mask = torch.zeros_like(s)
        for name, a in weights.items():
            p = torch.full_like(s, init_value) if name == BASE else layer.svf_vector[name].detach().double()
            mask += a * torch.sigmoid(p)
        new_s = s * mask * s.sum() / (s * mask).sum()
    else:
        z = torch.zeros_like(s)
        for name, a in weights.items():
            z += a * (torch.ones_like(s) if name == BASE else layer.svf_vector[name].detach().double())
        new_s = s * z
    U, Vh = layer.svf_U.double(), layer.svf_Vh.double()
    weight = layer.dense_weight().double() + (U * (new_s - s)) @ Vh
    bias = layer.get_base_layer().bias
    out = x.double() @ weight.T
    return out if bias is None else out + bias.double()


def check_layers(model, name, alpha, parameterization):
    generator = torch.Generator().manual_seed(0)
    for module, layer in svf_layers(model).items():
        layer.module_name = module
        x = torch.randn(3, layer.in_features, generator=generator)
        with torch.no_grad():
            got = layer(x, adapter_names=[name] * 3)
        expected = reference_output(layer, x, alpha, parameterization)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
        assert (expected - x.double() @ layer.dense_weight().double().T).abs().max() > 1e-3  # really changed


@pytest.mark.parametrize("parameterization", ["official", "scale"])
def test_mixture_matches_float64_formula(parameterization):
    model, _ = tiny_experts(parameterization)
    alpha = {"math": 0.7, "code": 0.2, "reasoning": 0.45}
    mix_svf_adapters(model, alpha, "mixed")
    assert model.peft_config["mixed"].parameterization == parameterization
    check_layers(model, "mixed", alpha, parameterization)


@pytest.mark.parametrize("parameterization", ["official", "scale"])
def test_per_layer_mixture_with_base_matches_float64_formula(parameterization):
    model, _ = tiny_experts(parameterization)
    modules = list(svf_layers(model))
    generator = torch.Generator().manual_seed(1)
    alpha = {e: {m: float(torch.rand(1, generator=generator)) for m in modules} for e in EXPERTS}
    alpha[BASE] = dict.fromkeys(modules, 0.3)
    with temporary_mixtures(model, {"__tmp": alpha}):
        check_layers(model, "__tmp", alpha, parameterization)


@pytest.mark.parametrize("parameterization", ["official", "scale"])
def test_one_hot_mixture_is_the_expert_exactly(parameterization, input_ids):
    model, _ = tiny_experts(parameterization)
    mix_svf_adapters(model, {"math": 0.0, "code": 1.0, "reasoning": 0.0}, "just_code")
    with torch.no_grad():
        model.set_adapter("code")
        expert = model(input_ids % 20).logits
        model.set_adapter("just_code")
        mixed = model(input_ids % 20).logits
    assert torch.equal(expert, mixed)


def test_saturated_official_mask_falls_back_to_exact_scale_adapter():
    model, _ = tiny_experts()
    layer = next(iter(svf_layers(model).values()))
    with torch.no_grad():
        layer.svf_vector["math"][0] = 60.0  # sigmoid rounds to exactly 1 in float64: logit(1) is infinite
        layer.svf_vector["code"][0] = 60.0
    alpha = {"math": 0.5, "code": 0.5}
    mix_svf_adapters(model, alpha, "mixed")
    assert model.peft_config["mixed"].parameterization == "scale"
    check_layers(model, "mixed", alpha, "official")


def test_all_zero_alpha_is_the_base_model(input_ids):
    model, _ = tiny_experts()
    mix_svf_adapters(model, dict.fromkeys(EXPERTS, 0.0), "nothing")
    with torch.no_grad():
        model.set_adapter("nothing")
        mixed = model(input_ids % 20).logits
        with model.disable_adapter():
            base = model(input_ids % 20).logits
    torch.testing.assert_close(mixed, base, atol=1e-5, rtol=1e-5)


def test_mixing_leaves_active_adapter_and_grads_alone():
    model, _ = tiny_experts()
    model.set_adapter("code")
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    mix_svf_adapters(model, {"math": 0.5, "code": 0.5}, "mixed")
    assert model.active_adapter == "code"
    assert {n: p.requires_grad for n, p in model.named_parameters() if n in grads} == grads
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith(".mixed"))


def test_temporary_mixtures_are_removed_even_after_an_error():
    model, _ = tiny_experts()
    before = [sorted(layer.svf_vector) for layer in svf_layers(model).values()]
    with (
        pytest.raises(RuntimeError, match="boom"),
        temporary_mixtures(model, {"__a": {"math": 1.0, "code": 0.5}}),
    ):
        assert all("__a" in layer.svf_vector for layer in svf_layers(model).values())
        raise RuntimeError("boom")
    assert [sorted(layer.svf_vector) for layer in svf_layers(model).values()] == before


def test_mixing_errors():
    model, _ = tiny_experts()
    with pytest.raises(ValueError, match="not an SVF adapter"):
        mix_svf_adapters(model, {"typo": 1.0}, "x")
    with pytest.raises(ValueError, match="exists already"):
        mix_svf_adapters(model, {"math": 1.0}, "code")
    with pytest.raises(ValueError, match="no weight for module"):
        mix_svf_adapters(model, {"math": {"model.layers.0.mlp.up_proj": 1.0}}, "x")
    with pytest.raises(ValueError, match="non-negative"):
        mix_svf_adapters(model, {"math": 1.0, "code": -0.5}, "x")


@pytest.mark.parametrize("parameterization", ["official", "scale"])
def test_add_weighted_adapter_mixes_per_layer_and_whole_weights_with_the_base(parameterization, tmp_path):
    """PEFT's signature on the tuner: scalar and per-module weights side by side, "__base__" as identity."""
    model, _ = tiny_experts(parameterization)
    modules = list(svf_layers(model))
    per_layer = {m: 0.1 + i / len(modules) for i, m in enumerate(modules)}
    model.add_weighted_adapter(["math", "code", BASE], [0.6, per_layer, 0.25], "mixed")
    alpha = {"math": 0.6, "code": per_layer, BASE: 0.25}
    check_layers(model, "mixed", alpha, parameterization)
    config = model.peft_config["mixed"]
    assert config.parameterization == parameterization and config.inference_mode
    assert set(config.target_modules) == set(modules)
    # saved and loaded like any expert, onto a fresh copy of the same base
    model.save_pretrained(tmp_path, selected_adapters=["mixed"])
    fresh, _ = tiny_experts(parameterization)
    fresh.load_adapter(tmp_path / "mixed", adapter_name="mixed")
    ids = torch.arange(12).reshape(2, 6) % 20
    with torch.no_grad():
        model.set_adapter("mixed")
        fresh.set_adapter("mixed")
        assert torch.equal(model(ids).logits, fresh(ids).logits)


def test_add_weighted_adapter_argument_errors():
    model, _ = tiny_experts()
    with pytest.raises(ValueError, match="one weight per distinct adapter"):
        model.add_weighted_adapter(["math", "code"], [1.0], "x")
    with pytest.raises(ValueError, match="one weight per distinct adapter"):
        model.add_weighted_adapter(["math", "math"], [1.0, 0.5], "x")
    with pytest.raises(ValueError, match="besides the base"):
        model.add_weighted_adapter([BASE], [1.0], "x")
    with pytest.raises(ValueError, match="exists already"):
        model.add_weighted_adapter(["math"], [1.0], BASE)
    assert "x" not in model.peft_config
