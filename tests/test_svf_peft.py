"""SVF through PEFT's own entry points: identity, training, save/load, merge, adapters, errors."""

from __future__ import annotations

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from peft.utils.quantization_utils import ForwardOnlyQuantizationBackend
from safetensors.torch import load_file

import peft_svf.svf.layer as svf_layer
import peft_svf.svf.model as svf_model
from peft_svf import SVFConfig
from peft_svf.svf.layer import SVFLayer
from tiny_models import make_tiny_gpt2, make_tiny_llama

LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def svf_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, SVFLayer)}


def randomize_vectors(model, seed: int = 0, scale: float = 1.0, adapter_name: str = "default") -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(f"svf_vector.{adapter_name}"):
                param.add_(scale * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("make_model", [make_tiny_llama, make_tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("parameterization", ["official", "scale"])
@pytest.mark.parametrize("mode", ["auto", "recompose", "factored"])
def test_identity_adapter_reproduces_base_logits(make_model, parameterization, mode, input_ids):
    base = make_model()
    with torch.no_grad():
        expected = base(input_ids).logits
    model = get_peft_model(base, SVFConfig(parameterization=parameterization, forward_mode=mode))
    with torch.no_grad():
        actual = model(input_ids).logits
    # The spec asks for <= 1e-5; keeping W x apart from the (zero) change makes it exact.
    assert torch.equal(actual, expected)


def test_default_targets_cover_attention_and_mlp():
    model = get_peft_model(make_tiny_llama(), SVFConfig())
    suffixes = {name.rsplit(".", 1)[-1] for name in svf_layers(model)}
    assert suffixes == LLAMA_TARGETS
    gpt2 = get_peft_model(make_tiny_gpt2(), SVFConfig())
    assert {name.rsplit(".", 1)[-1] for name in svf_layers(gpt2)} == {"c_attn", "c_proj", "c_fc"}


def test_trainable_parameter_count_is_sum_of_min_dims():
    base = make_tiny_llama()
    expected = sum(
        min(m.weight.shape) for name, m in base.named_modules() if name.rsplit(".", 1)[-1] in LLAMA_TARGETS
    )
    model = get_peft_model(base, SVFConfig())
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == expected
    assert all("svf_vector" in n for n, p in model.named_parameters() if p.requires_grad)


def test_layers_to_transform_restricts_to_those_layers():
    model = get_peft_model(
        make_tiny_llama(layers=3), SVFConfig(layers_to_transform=[1], target_modules=["q_proj"])
    )
    assert list(svf_layers(model)) == ["base_model.model.model.layers.1.self_attn.q_proj"]


def test_gradients_reach_only_svf_vectors_and_base_is_untouched(input_ids):
    base = make_tiny_llama()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, SVFConfig(init_noise_std=0.01))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("svf_vector" in n for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())
    optimizer.step()
    after = model.get_base_model().state_dict()
    for key, value in before.items():
        peft_key = key
        if key not in after:  # wrapped module: its weight now lives under base_layer
            peft_key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[peft_key], value), key
    assert model(input_ids, labels=input_ids).loss.item() != pytest.approx(loss.item())


def test_save_load_round_trips_are_exact(tmp_path, input_ids):
    model = get_peft_model(make_tiny_llama(), SVFConfig())
    randomize_vectors(model)
    with torch.no_grad():
        expected = model(input_ids).logits
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SVF"
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all(k.endswith(".svf_vector") for k in saved)  # factors are never saved

    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, expected)

    other = get_peft_model(make_tiny_llama(), SVFConfig())
    other.load_adapter(tmp_path / "adapter", adapter_name="expert")
    other.set_adapter("expert")
    with torch.no_grad():
        assert torch.equal(other(input_ids).logits, expected)


def test_auto_peft_model_loads_base_and_adapter(tmp_path, input_ids):
    base = make_tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, SVFConfig(task_type="CAUSAL_LM"))
    randomize_vectors(model)
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = model(input_ids).logits
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, expected)


def test_merge_unmerge_and_merge_and_unload(input_ids):
    base = make_tiny_llama()
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, SVFConfig())
    randomize_vectors(model)
    with torch.no_grad():
        unmerged = model(input_ids).logits
        model.merge_adapter()
        merged = model(input_ids).logits
        model.unmerge_adapter()
        after_unmerge = model(input_ids).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after_unmerge, unmerged, atol=1e-5, rtol=1e-5)
    plain = model.merge_and_unload()
    assert not svf_layers(plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids).logits, unmerged, atol=1e-5, rtol=1e-5)
    # unmerge restores the base weights within float tolerance
    restored = get_peft_model(make_tiny_llama(), SVFConfig())
    randomize_vectors(restored)
    restored.merge_adapter()
    restored.unmerge_adapter()
    for key, value in restored.unload().state_dict().items():
        torch.testing.assert_close(value, base_weights[key], atol=1e-5, rtol=1e-5)


def test_disable_adapter_context_gives_base_output(input_ids):
    base = make_tiny_llama()
    with torch.no_grad():
        expected = base(input_ids).logits
    model = get_peft_model(base, SVFConfig())
    randomize_vectors(model)
    with torch.no_grad():
        adapted = model(input_ids).logits
        with model.disable_adapter():
            assert torch.equal(model(input_ids).logits, expected)
        assert torch.equal(model(input_ids).logits, adapted)
    assert (adapted - expected).abs().max() > 1e-2


def test_adapters_share_one_decomposition_and_switch_and_delete(input_ids):
    model = get_peft_model(make_tiny_llama(), SVFConfig())
    layer = next(iter(svf_layers(model).values()))
    factors = (layer.svf_U.data_ptr(), layer.svf_Vh.data_ptr())
    buffers_before = sum(b.numel() for b in model.buffers())
    model.add_adapter("math", SVFConfig())
    assert (layer.svf_U.data_ptr(), layer.svf_Vh.data_ptr()) == factors
    assert sum(b.numel() for b in model.buffers()) == buffers_before  # an expert adds only its vectors
    with torch.no_grad():
        default_out = model(input_ids).logits
        model.set_adapter("math")
        randomize_vectors(model, seed=5, adapter_name="math")
        math_out = model(input_ids).logits
        model.set_adapter("default")
        assert torch.equal(model(input_ids).logits, default_out)
    assert (math_out - default_out).abs().max() > 1e-3
    model.delete_adapter("math")
    assert all("math" not in m.svf_vector for m in svf_layers(model).values())


@pytest.mark.parametrize(
    ("field", "value"), [("keep_base_weight", False), ("svd_dtype", "float64"), ("factors_dtype", "float64")]
)
def test_later_adapter_conflicting_with_the_shared_decomposition_is_refused(field, value, input_ids):
    model = get_peft_model(make_tiny_llama(), SVFConfig())
    layer = next(iter(svf_layers(model).values()))
    factors = (layer.svf_U.dtype, layer.get_base_layer().weight.numel())
    with pytest.raises(
        ValueError, match=rf"{field}={value!r}.*conflicts with .* of adapter 'default'.*share"
    ):
        model.add_adapter("other", SVFConfig(**{field: value}))
    assert "other" not in model.peft_config and all(
        "other" not in m.svf_vector for m in svf_layers(model).values()
    )
    assert (layer.svf_U.dtype, layer.get_base_layer().weight.numel()) == factors
    model.add_adapter("same", SVFConfig())  # the first adapter's values are accepted


def test_forward_mode_is_per_adapter(input_ids, monkeypatch):
    """Each adapter computes its change its own way; the first adapter's mode no longer decides for all."""
    model = get_peft_model(make_tiny_llama(), SVFConfig(forward_mode="factored", init_noise_std=0.5))
    model.add_adapter("dense", SVFConfig(forward_mode="recompose", init_noise_std=0.5))
    paths = []
    for name in ("_forward_factored", "_forward_with_dense_change"):
        real = getattr(svf_layer.SVFLayer, name)
        monkeypatch.setattr(
            svf_layer.SVFLayer,
            name,
            lambda self, x, c, real=real, name=name: paths.append(name) or real(self, x, c),
        )
    with torch.no_grad():
        for adapter, path in (("default", "_forward_factored"), ("dense", "_forward_with_dense_change")):
            model.set_adapter(adapter)
            paths.clear()
            model(input_ids)
            assert set(paths) == {path}


def test_target_modules_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(make_tiny_llama(), SVFConfig(target_modules=["no_such_module"]))


def test_unsupported_module_type_is_named():
    with pytest.raises(ValueError, match=r"embed_tokens.*Embedding.*supports"):
        get_peft_model(make_tiny_llama(), SVFConfig(target_modules=["embed_tokens"]))


def test_quantised_base_that_cannot_be_dequantised_is_refused(monkeypatch):
    """A forward-only backend (GPTQ, AWQ...) gives no weight to decompose: the module is named, not wrapped."""

    def gptq_for_q_proj(base, **kwargs):
        return ForwardOnlyQuantizationBackend("gptq") if base.out_features == 32 else None

    monkeypatch.setattr(svf_model, "resolve_quantization_backend", gptq_for_q_proj)
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.q_proj.*dequantises"):
        get_peft_model(make_tiny_llama(), SVFConfig(target_modules=["q_proj"]))


def test_adapter_for_another_base_is_refused_with_shapes(tmp_path):
    get_peft_model(make_tiny_llama(hidden=48), SVFConfig()).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match=r"q_proj'.*shape \(48,\).*needs \(32,\)"):
        PeftModel.from_pretrained(make_tiny_llama(hidden=32), tmp_path / "wide")


def test_corrupted_adapter_files_are_refused(tmp_path):
    model = get_peft_model(make_tiny_llama(), SVFConfig())
    model.save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(weights)
    first = next(iter(tensors))
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    from safetensors.torch import save_file

    save_file(tensors, weights)
    with pytest.raises(ValueError, match="NaN or infinite"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "a")
    weights.write_bytes(weights.read_bytes()[:40])  # truncated file
    with pytest.raises(Exception, match=r"(?i)deserializ|header|invalid|incomplete"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "a")
