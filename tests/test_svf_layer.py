"""SVF layer maths against independent dense computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_svf import SVFConfig
from peft_svf.svf.layer import all_finite, path_costs


class TwoLinear(nn.Module):
    def __init__(self, conv1d: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        if conv1d:
            self.proj = Conv1D(7, 5)  # in 5, out 7, weight stored (5, 7)
            nn.init.normal_(self.proj.weight)
            nn.init.normal_(self.proj.bias)
        else:
            self.proj = nn.Linear(5, 7)
        self.other = nn.Linear(7, 3)

    def forward(self, x):
        return self.other(self.proj(x))


def dense_weight_of(module: nn.Module) -> torch.Tensor:
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def expected_adapted_weight(
    weight: torch.Tensor, vector: torch.Tensor, parameterization: str
) -> torch.Tensor:
    """Paper section 3.2 and the authors' code, written out in float64 from a fresh SVD."""
    U, s, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
    v = vector.double()
    if parameterization == "scale":
        s_new = s * v
    else:
        mask = torch.sigmoid(v)
        s_new = s * mask * (s.sum() / (s * mask).sum())
    return U @ torch.diag(s_new) @ Vh


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("parameterization", ["official", "scale"])
@pytest.mark.parametrize("mode", ["recompose", "factored"])
def test_layer_output_equals_dense_reconstruction(conv1d, parameterization, mode):
    model = TwoLinear(conv1d)
    weight = dense_weight_of(model.proj).detach().clone()
    bias = model.proj.bias.detach().clone()
    peft_model = get_peft_model(
        model, SVFConfig(target_modules=["proj"], parameterization=parameterization, forward_mode=mode)
    )
    layer = peft_model.base_model.model.proj
    vector = torch.randn(5, generator=torch.Generator().manual_seed(3)) + (
        1.0 if parameterization == "scale" else 0
    )
    with torch.no_grad():
        layer.svf_vector["default"].copy_(vector)
    x = torch.randn(4, 5, dtype=torch.float32)
    expected = x.double() @ expected_adapted_weight(weight, vector, parameterization).T + bias.double()
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_auto_mode_agrees_with_both_explicit_modes():
    outputs = {}
    for mode in ("auto", "recompose", "factored"):
        model = TwoLinear()
        peft_model = get_peft_model(model, SVFConfig(target_modules=["proj"], forward_mode=mode))
        with torch.no_grad():
            peft_model.base_model.model.proj.svf_vector["default"].copy_(torch.linspace(-1, 1, 5))
        outputs[mode] = peft_model(torch.ones(3, 5))
    torch.testing.assert_close(outputs["auto"], outputs["recompose"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["auto"], outputs["factored"], atol=1e-5, rtol=1e-5)


def prefer_recompose(**shape) -> bool:
    recompose, factored = path_costs(**shape)
    return recompose < factored


@pytest.mark.parametrize("replaces_base", [True, False])
def test_cost_model_prefers_factored_for_few_tokens_and_recompose_for_many_on_square_weights(replaces_base):
    for needs_grad in (True, False):
        square = {"out_features": 576, "in_features": 576, "rank": 576, "needs_grad": needs_grad}
        assert not prefer_recompose(tokens=16, factored_replaces_base=replaces_base, **square)
        assert prefer_recompose(tokens=8192, factored_replaces_base=replaces_base, **square)


def test_cost_model_prefers_factored_for_wide_dense_weights_even_with_many_tokens():
    # Llama-3-8B gate_proj: U (s' * V^T x) costs 1.29x the base matmul, recomposing costs far more.
    wide = {"out_features": 14336, "in_features": 4096, "rank": 4096}
    assert not prefer_recompose(tokens=16384, needs_grad=True, factored_replaces_base=True, **wide)
    # On a quantised base the factored path adds to the base matmul, so many tokens favour recomposing.
    assert prefer_recompose(tokens=16384, needs_grad=True, factored_replaces_base=False, **wide)


def test_stacked_adapters_add_their_singular_value_changes():
    model = TwoLinear()
    weight = model.proj.weight.detach().clone()
    peft_model = get_peft_model(model, SVFConfig(target_modules=["proj"], parameterization="scale"))
    peft_model.add_adapter("second", SVFConfig(target_modules=["proj"], parameterization="scale"))
    layer = peft_model.base_model.model.proj
    z1, z2 = torch.tensor([1.5, 0.5, 1.0, 2.0, 0.1]), torch.tensor([0.9, 1.2, 0.3, 1.0, 1.0])
    with torch.no_grad():
        layer.svf_vector["default"].copy_(z1)
        layer.svf_vector["second"].copy_(z2)
    peft_model.base_model.set_adapter(["default", "second"])
    # s' = s + s(z1 - 1) + s(z2 - 1) = s (z1 + z2 - 1)
    expected = expected_adapted_weight(weight, z1 + z2 - 1, "scale")
    x = torch.randn(3, 5)
    torch.testing.assert_close(
        layer(x).double(), x.double() @ expected.T + model.proj.bias.double(), atol=1e-5, rtol=1e-5
    )
    # Merging one after the other gives the weight that both give together.
    peft_model.merge_adapter(["default", "second"])
    torch.testing.assert_close(layer.get_base_layer().weight.double(), expected, atol=1e-5, rtol=1e-5)


def test_training_forward_on_a_wide_dense_weight_uses_the_factors_alone_with_exact_vector_gradients():
    """With gradients, ``auto`` drops ``W x`` on a wide weight (cheaper than a recomposed weight's gradient);
    the output and the vector's gradient still match the dense formula, and inference keeps ``W x`` exact."""
    torch.manual_seed(0)
    base = nn.Linear(16, 48)
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    model = get_peft_model(nn.Sequential(base), SVFConfig(target_modules=["0"], init_noise_std=0.0))
    layer = model.base_model.model[0]
    x = torch.randn(4, 128, 16)
    with torch.no_grad():
        assert layer._forward_path(x, ["default"]) != "from_factors"
        # A fresh adapter at inference is the base layer bit for bit.
        assert torch.equal(layer(x), F.linear(x, weight, bias))
    assert layer._forward_path(x, ["default"]) == "from_factors"

    vector = torch.linspace(-1.0, 1.0, 16)
    with torch.no_grad():
        layer.svf_vector["default"].copy_(vector)
    probe = torch.randn(4, 128, 48)
    (layer(x) * probe).sum().backward()

    exact_vector = vector.double().requires_grad_(True)
    expected = x.double() @ expected_adapted_weight(weight, exact_vector, "official").T + bias.double()
    (expected * probe.double()).sum().backward()
    torch.testing.assert_close(layer(x).double(), expected.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        layer.svf_vector["default"].grad.double(), exact_vector.grad, atol=1e-3, rtol=1e-4
    )


def test_training_forward_on_a_square_weight_keeps_recomposing():
    model = get_peft_model(nn.Sequential(nn.Linear(16, 16)), SVFConfig(target_modules=["0"]))
    layer = model.base_model.model[0]
    assert layer._forward_path(torch.randn(4, 128, 16), ["default"]) == "recompose"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_agrees_with_the_elementwise_test(dtype):
    """Every case the one-pass sum could get wrong: values at the dtype's maximum (a float64 sum of float64
    ones overflows), an inf, both infs (their sum is nan), a nan, and a finite tensor."""
    top = torch.finfo(dtype).max
    cases = {
        "random": torch.randn(64, 32),
        "all at max": torch.full((64, 32), top, dtype=torch.float64),
        "max and -max": torch.tensor([top, -top] * 50, dtype=torch.float64),
        "one inf": torch.cat([torch.randn(99), torch.tensor([float("inf")])]),
        "inf and -inf": torch.tensor([float("inf"), 1.0, float("-inf")]),
        "one nan": torch.cat([torch.tensor([float("nan")]), torch.randn(99)]),
    }
    for name, values in cases.items():
        tensor = values.to(dtype)
        assert all_finite(tensor) == bool(torch.isfinite(tensor).all()), name
    assert all_finite(torch.tensor([2**62, 2**62]))  # integers are always finite
