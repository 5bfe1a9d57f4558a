"""SVD cache, shape-only counting, the authors' expert importer, freeing W, bitsandbytes bases."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import peft_svf.svf.decomposition as decomposition
from peft_svf import SVFConfig, convert_official
from peft_svf.svf.counting import count_svf_parameters
from peft_svf.svf.layer import SVFLayer
from tiny_models import make_tiny_llama


def count_svd_calls(monkeypatch) -> list[int]:
    calls = []
    real = decomposition.compute_svd

    def counting(matrix, svd_dtype="float32"):
        calls.append(1)
        return real(matrix, svd_dtype)

    monkeypatch.setattr(decomposition, "compute_svd", counting)
    return calls


def test_svd_cache_is_hit_on_second_call_and_invalidated_by_a_weight_change(monkeypatch, isolated_svd_cache):
    calls = count_svd_calls(monkeypatch)
    get_peft_model(make_tiny_llama(), SVFConfig())
    first = len(calls)
    assert first == 14  # 7 projections x 2 layers
    assert len(list(isolated_svd_cache.glob("*.safetensors"))) == first
    get_peft_model(make_tiny_llama(), SVFConfig())
    assert len(calls) == first  # all from disk
    changed = make_tiny_llama()
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    get_peft_model(changed, SVFConfig())
    assert len(calls) == first + 1  # only the changed weight is decomposed again


def test_cached_factors_reproduce_the_freshly_computed_adapter(input_ids):
    fresh = get_peft_model(make_tiny_llama(), SVFConfig(init_noise_std=0.5))
    torch.manual_seed(0)
    cached = get_peft_model(make_tiny_llama(), SVFConfig())
    cached.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(input_ids).logits, cached(input_ids).logits)


def test_unreadable_cache_entry_is_recomputed(isolated_svd_cache, monkeypatch):
    get_peft_model(make_tiny_llama(), SVFConfig())
    for entry in isolated_svd_cache.glob("*.safetensors"):
        entry.write_bytes(b"garbage")
    calls = count_svd_calls(monkeypatch)
    get_peft_model(make_tiny_llama(), SVFConfig())
    assert len(calls) == 14


def test_float64_svd_is_more_exact():
    weight = torch.randn(40, 30)
    for dtype, tol in (("float32", 1e-4), ("float64", 1e-10)):
        f = decomposition.compute_svd(weight.double(), dtype)
        assert (f.U @ torch.diag(f.S) @ f.Vh - weight.double()).abs().max() < tol


def test_llama3_8b_counts_from_shapes_on_meta_device():
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # Paper Table 4: MLP 0.39M, attention (q, v) 0.16M.
    assert (
        count_svf_parameters(model, SVFConfig(target_modules=["gate_proj", "up_proj", "down_proj"]))
        == 393_216
    )
    assert count_svf_parameters(model, SVFConfig(target_modules=["q_proj", "v_proj"])) == 163_840


def test_shape_count_matches_a_real_adapter():
    config = SVFConfig(target_modules=["q_proj", "k_proj", "down_proj"])
    assert (
        count_svf_parameters(make_tiny_llama(), config)
        == get_peft_model(make_tiny_llama(), config).get_nb_trainable_parameters()[0]
    )


def test_convert_official_expert_file(tmp_path, input_ids):
    base = make_tiny_llama()
    generator = torch.Generator().manual_seed(2)
    names = [
        f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    ]
    vectors = {n: 0.1 + torch.randn(min(base.get_parameter(n).shape), generator=generator) for n in names}
    weights = {n: base.get_parameter(n).detach().clone() for n in names}
    torch.save(vectors, tmp_path / "expert.pt")
    # float64 factors: the check is of the import and the formula, not of float32 SVD rounding (~5e-6 relative)
    out = convert_official(
        tmp_path / "expert.pt", tmp_path / "converted", svd_dtype="float64", factors_dtype="float64"
    )
    model = PeftModel.from_pretrained(base, out)
    for name in names:
        layer = model.base_model.model.get_submodule(name.removesuffix(".weight"))
        assert torch.equal(layer.svf_vector["default"].detach(), vectors[name])
        # authors' formula from their own decomposition, in float64
        U, s, Vh = torch.linalg.svd(weights[name].double(), full_matrices=False)
        mask = torch.sigmoid(vectors[name].double())
        expected = U @ torch.diag(s * mask * s.sum() / (s * mask).sum()) @ Vh
        x = torch.randn(3, weights[name].shape[1])
        torch.testing.assert_close(layer(x).double(), x.double() @ expected.T, atol=1e-5, rtol=1e-5)
    assert {n.rsplit(".", 1)[0] for n, m in model.named_modules() if isinstance(m, SVFLayer)} == {
        "base_model.model.model.layers.0.mlp",
        "base_model.model.model.layers.1.mlp",
    }


def test_convert_official_refuses_non_tensor_payloads(tmp_path):
    torch.save({"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="1-D tensor"):
        convert_official(tmp_path / "bad.pt", tmp_path / "out")


def test_freeing_base_weight_keeps_outputs_and_restores_on_unload(input_ids):
    base = make_tiny_llama()
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.no_grad():
        expected = base(input_ids).logits
    model = get_peft_model(base, SVFConfig(keep_base_weight=False))
    layers = [m for m in model.modules() if isinstance(m, SVFLayer)]
    assert all(m.get_base_layer().weight.numel() == 0 for m in layers)
    # W is now rebuilt from float32 factors, so the base is reproduced to float32 SVD precision only.
    with torch.no_grad():
        assert (model(input_ids).logits - expected).abs().max() <= 5e-5
        with model.disable_adapter():
            assert (model(input_ids).logits - expected).abs().max() <= 5e-5
        for layer in layers:
            layer.svf_vector["default"].add_(torch.randn_like(layer.svf_vector["default"]))
        adapted = model(input_ids).logits
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids).logits, adapted, atol=1e-5, rtol=1e-5)
        model.unmerge_adapter()
        assert all(m.get_base_layer().weight.numel() == 0 for m in layers)
    plain = model.unload()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, reference[key], atol=5e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def bnb():
    """bitsandbytes, skipped where it is missing: only the quantised-base tests need it."""
    return pytest.importorskip("bitsandbytes")


def quantize_linears(bnb, model, kind: str):
    """Swap every decoder linear for a bitsandbytes one built from the same weights (on the CPU)."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        if kind == "4bit":
            q = bnb.nn.Linear4bit(
                module.in_features, module.out_features, bias=False, compute_dtype=torch.float32
            )
            q.weight = bnb.nn.Params4bit(module.weight.data.clone(), requires_grad=False, quant_type="nf4")
        else:
            q = bnb.nn.Linear8bitLt(
                module.in_features, module.out_features, bias=False, has_fp16_weights=False
            )
            q.weight = bnb.nn.Int8Params(
                module.weight.data.clone(), requires_grad=False, has_fp16_weights=False
            )
        q = q.to("cpu")  # quantises the weight
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, q)
    return model


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantized_base_identity_adapter_matches_quantized_output(bnb, kind, input_ids):
    base = quantize_linears(bnb, make_tiny_llama(), kind)
    with torch.no_grad():
        expected = base(input_ids).logits
    model = get_peft_model(base, SVFConfig())
    layers = [m for m in model.modules() if isinstance(m, SVFLayer)]
    assert len(layers) == 14 and all(m.quantization_backend.backend_name == f"bnb {kind}" for m in layers)
    with torch.no_grad():
        assert (model(input_ids).logits - expected).abs().max() <= 1e-5
    # the adapted layer equals the dequantised weight's own SVD, rescaled
    layer = layers[0]
    dense = layer.dense_weight().detach().double()
    with torch.no_grad():
        layer.svf_vector["default"].add_(torch.randn_like(layer.svf_vector["default"]))
        x = torch.randn(3, layer.in_features)
        quantized_out = layer.get_base_layer()(x).double()
        U, s, Vh = torch.linalg.svd(dense, full_matrices=False)
        mask = torch.sigmoid(layer.svf_vector["default"].double())
        change = U @ torch.diag(s * mask * s.sum() / (s * mask).sum() - s) @ Vh
        torch.testing.assert_close(
            layer(x).double(), quantized_out + x.double() @ change.T, atol=1e-4, rtol=1e-4
        )
    assert all(not p.requires_grad for n, p in model.named_parameters() if "svf_vector" not in n)


def test_4bit_base_used_for_inference_first_still_decomposes_its_own_weights(bnb, input_ids):
    """bitsandbytes repacks a 4-bit weight at its first no-grad eval forward on AVX512-BF16 CPUs."""
    from peft.utils.integrations import dequantize_bnb_weight

    base = quantize_linears(bnb, make_tiny_llama(hidden=128, layers=1), "4bit").eval()
    dequantized = {
        name: dequantize_bnb_weight(m.weight).float().clone()
        for name, m in base.named_modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }
    with torch.no_grad():
        base(input_ids)  # may repack the weights (and then computes in bf16)
    model = get_peft_model(base, SVFConfig())
    for name, layer in model.named_modules():
        if isinstance(layer, SVFLayer):
            key = name.removeprefix("base_model.model.")
            # repacking stores the block scales in bf16, so undoing it gives them back to bf16 precision
            torch.testing.assert_close(layer.dense_weight(), dequantized[key], atol=1e-2, rtol=1e-2)
    with torch.no_grad(), model.disable_adapter():
        expected = model(input_ids).logits
    with torch.no_grad():
        assert (model(input_ids).logits - expected).abs().max() <= 1e-5
    embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    model(inputs_embeds=embeddings).logits.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
