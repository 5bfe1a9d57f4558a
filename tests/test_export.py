"""Exports of SVF experts: exact low-rank truncation, PEFT's save_as_lora, and ``peft-svf export`` (merged
weights and LoRA adapters), checked against the SVF model, an independent dense SVD and vLLM's LoRA rules."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.conversion import _find_cutoff_index, convert_to_lora, save_as_lora
from transformers import AutoModelForCausalLM

from peft_svf import SVFConfig
from peft_svf.adaptive.mixing import mix_svf_adapters, svf_layers
from peft_svf.svf import low_rank
from peft_svf.svf.low_rank import svf_to_lora, top_components, truncated_factors
from tiny_models import make_tiny_gpt2, make_tiny_llama
from trainer_fixtures import run_cli as run
from trainer_fixtures import tiny_tokenizer
from vllm_lora_rules import vllm_violations

MAKERS = {"llama": make_tiny_llama, "gpt2": make_tiny_gpt2}
ATOL = 1e-4


def svf_model(make, seed: int = 0, **config) -> PeftModel:
    """An SVF adapter whose vector is random (init_weights=False), so every component changes."""
    torch.manual_seed(seed)
    config = {"init_weights": False, "parameterization": "scale", "svd_cache": False, **config}
    return get_peft_model(make(), SVFConfig(**config)).eval()


def logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs).logits


def dense_deltas(model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    """Each SVF layer's change as a dense (out, in) matrix: merged weight minus base weight (no factors read)."""
    deltas = {}
    for name, layer in svf_layers(model).items():
        before = layer.dense_weight().detach().clone()
        layer.merge(adapter_names=[adapter])
        deltas[name] = (layer.dense_weight().detach() - before).double()
        layer.unmerge()
    return deltas


def eckart_young(delta: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def assert_optimal_rank_k(approximation: torch.Tensor, delta: torch.Tensor, S: torch.Tensor, k: int) -> None:
    """``approximation`` is a best rank-k approximation of ``delta`` (Eckart–Young): rank at most k and residual
    ``sqrt(sum of the dropped S_i^2)``. Compared as matrices where S_k > S_k+1 (a tie at the cut, as a
    mixture can have, makes any choice among the tied components optimal)."""
    assert torch.linalg.matrix_rank(approximation, atol=1e-6).item() <= k
    optimum = S[k:].square().sum().sqrt()
    torch.testing.assert_close(torch.linalg.matrix_norm(delta - approximation), optimum, atol=1e-5, rtol=1e-4)
    if k >= S.numel() or S[k - 1] - S[k] > 1e-4 * S[0]:
        torch.testing.assert_close(approximation, eckart_young(delta, k), atol=1e-5, rtol=1e-4)


def lora_delta(layer: LoraLayer) -> torch.Tensor:
    """A loaded LoRA layer's change in the (out, in) frame, scaling included."""
    name = layer.active_adapters[0]
    A, B = layer.lora_A[name].weight.double(), layer.lora_B[name].weight.double()
    return layer.scaling[name] * (B @ A)


def lora_layers(model: PeftModel) -> dict[str, LoraLayer]:
    return {
        name.removeprefix("base_model.model."): m
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer)
    }


# -- the truncation ---------------------------------------------------------------------------------------
def test_top_components_by_rank_and_by_energy_share():
    torch.manual_seed(0)
    change = torch.randn(40)
    magnitudes = change.abs().sort(descending=True).values
    for k in (1, 5, 40, 100):
        kept = top_components(change, k)
        assert kept.numel() == min(k, 40)
        assert torch.equal(change[kept].abs(), magnitudes[: min(k, 40)])
    for share in (0.1, 0.5, 0.9, 0.999, 1.0):
        kept = top_components(change, share)
        assert kept.numel() == _find_cutoff_index(magnitudes, share)
        energy = change[kept].pow(2).sum() / change.pow(2).sum()
        assert energy >= share - 1e-6
    assert top_components(torch.tensor([0.0, 2.0, 0.0, -1.0]), 1.0).tolist() == [1, 3]  # zeros not needed
    for bad in (0, -1, 0.0, 1.5, True):
        with pytest.raises((ValueError, TypeError)):
            top_components(change, bad)


def test_truncated_factors_are_the_eckart_young_truncation_of_the_dense_change():
    torch.manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(12, 8, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(10, 8, dtype=torch.float64))
    change = torch.randn(8, dtype=torch.float64)
    dense = (U * change) @ V.T
    for k in (1, 3, 8):
        factors = truncated_factors(U, change, V.T, k)
        assert factors.lora_A.shape == (k, 10) and factors.lora_B.shape == (12, k)
        torch.testing.assert_close(factors.lora_B @ factors.lora_A, eckart_young(dense, k))
        _, S, _ = torch.linalg.svd(dense)
        assert factors.energy == pytest.approx((S[:k] ** 2).sum().item() / (S**2).sum().item())


# -- PEFT's own conversion ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(MAKERS))
def test_peft_save_as_lora_of_svf_reproduces_the_svf_model(arch, tmp_path, input_ids):
    make = MAKERS[arch]
    model = svf_model(make)
    assert model.supports_lora_conversion()
    expected = logits(model, input_ids)
    save_as_lora(tmp_path, model, rank=1.0)
    lora = PeftModel.from_pretrained(make(), tmp_path).eval()
    assert isinstance(lora.peft_config["default"], LoraConfig) and lora_layers(lora)
    torch.testing.assert_close(logits(lora, input_ids), expected, atol=ATOL, rtol=ATOL)


def test_peft_convert_to_lora_at_rank_k_is_the_truncated_change():
    model = svf_model(make_tiny_gpt2)
    deltas = dense_deltas(model, "default")
    config, state = convert_to_lora(model, rank=3)
    lora = get_peft_model(make_tiny_gpt2(), config).eval()
    assert not set_peft_model_state_dict(lora, state).unexpected_keys
    for name, layer in lora_layers(lora).items():
        torch.testing.assert_close(lora_delta(layer), eckart_young(deltas[name], 3), atol=1e-5, rtol=1e-4)


# -- the package's exact exporter --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(MAKERS))
def test_svf_to_lora_full_and_truncated(arch, input_ids):
    make = MAKERS[arch]
    model = svf_model(make)
    expected = logits(model, input_ids)
    deltas = dense_deltas(model, "default")
    full = svf_to_lora(model, "default", 1.0)
    lora = get_peft_model(make(), full.config).eval()
    assert not set_peft_model_state_dict(lora, full.state_dict).unexpected_keys
    torch.testing.assert_close(logits(lora, input_ids), expected, atol=ATOL, rtol=ATOL)
    assert full.mean_energy == pytest.approx(1.0)

    for rank_or_energy in (4, 0.6):
        export = svf_to_lora(model, "default", rank_or_energy)
        lora = get_peft_model(make(), export.config).eval()
        assert not set_peft_model_state_dict(lora, export.state_dict).unexpected_keys
        for name, layer in lora_layers(lora).items():
            _, S, _ = torch.linalg.svd(deltas[name])
            k = rank_or_energy if isinstance(rank_or_energy, int) else _find_cutoff_index(S, rank_or_energy)
            assert export.ranks[name] == k
            assert_optimal_rank_k(lora_delta(layer), deltas[name], S, k)
            assert export.energy[name] == pytest.approx((S[:k] ** 2).sum().item() / (S**2).sum().item())


def test_rank_above_the_cap_is_refused_naming_the_option():
    model = svf_model(make_tiny_llama)
    with pytest.raises(ValueError, match="--lora-rank 8"):
        svf_to_lora(model, "default", 1.0, max_rank=8)
    assert svf_to_lora(model, "default", 1.0, max_rank=None).config.r == 32


# -- peft-svf export ---------------------------------------------------------------------------------------------
def svf_reference(model_dir, experts: dict, alpha: dict | None = None) -> PeftModel:
    """The SVF model the export must reproduce: the experts loaded by PEFT, mixed by the package's own mixer."""
    (first, path), *others = experts.items()
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), path, adapter_name=first
    )
    for name, other in others:
        model.load_adapter(other, adapter_name=name)
    if alpha is not None:
        model.set_adapter(mix_svf_adapters(model, alpha, "reference"))
    return model.eval()


def assert_no_local_paths(folder, *paths) -> None:
    for file in folder.rglob("*"):
        if file.suffix in (".json", ".jinja", ".txt", ".md"):
            text = file.read_text()
            for path in paths:
                assert str(path) not in text, f"{file.name} names the local path {path}"


def expert_args(experts: dict) -> list[str]:
    return [arg for name, path in experts.items() for arg in ("--expert", f"{name}={path}")]


@pytest.mark.parametrize("mixture", [False, True])
def test_merged_export_loads_with_automodel_and_matches_svf(
    mixture, model_dir, experts, tmp_path, capsys, input_ids
):
    chosen = experts if mixture else {"math": experts["math"]}
    alpha = {"math": 0.7, "code": 0.4} if mixture else None
    out = tmp_path / "merged"
    argv = ["export", "--model", model_dir, *expert_args(chosen), "--merged", "--output-dir", out]
    code, _, err = run([*argv, *(["--alpha", json.dumps(alpha)] if alpha else [])], capsys)
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = input_ids % merged.config.vocab_size
    expected = logits(svf_reference(model_dir, chosen, alpha), ids)
    torch.testing.assert_close(logits(merged, ids), expected, atol=ATOL, rtol=ATOL)
    assert (out / "tokenizer_config.json").exists()
    assert_no_local_paths(out, model_dir, *experts.values())


@pytest.mark.parametrize("mixture", [False, True])
def test_lora_export_loads_in_peft_as_lora_and_keeps_vllms_rules(
    mixture, model_dir, experts, tmp_path, capsys, input_ids
):
    chosen = experts if mixture else {"math": experts["math"]}
    alpha = {"math": 0.5, "code": 0.5} if mixture else None
    reference = svf_reference(model_dir, chosen, alpha)
    ids = input_ids % reference.config.vocab_size
    expected = logits(reference, ids)
    deltas = dense_deltas(reference, reference.active_adapter)
    for flag, value in (("--lora-energy", 1.0), ("--lora-rank", 8), ("--lora-energy", 0.5)):
        out = tmp_path / f"lora{flag}{value}"
        argv = ["export", "--model", model_dir, *expert_args(chosen), flag, value, "--output-dir", out]
        code, stdout, err = run([*argv, *(["--alpha", json.dumps(alpha)] if alpha else [])], capsys)
        assert code == 0, err
        assert vllm_violations(out) == []
        assert_no_local_paths(out, model_dir, *experts.values())
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["lora_alpha"] == config["r"]
        lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out).eval()
        assert isinstance(lora.peft_config["default"], LoraConfig)
        layers = lora_layers(lora)
        assert set(layers) == set(deltas)
        if value == 1.0:
            torch.testing.assert_close(logits(lora, ids), expected, atol=ATOL, rtol=ATOL)
        for name, layer in layers.items():
            _, S, _ = torch.linalg.svd(deltas[name])
            k = value if flag == "--lora-rank" else _find_cutoff_index(S, value)
            assert_optimal_rank_k(lora_delta(layer), deltas[name], S, k)
        assert json.loads(stdout[: stdout.rindex("}") + 1])["r"] == config["r"]


def test_lora_export_above_the_vllm_cap_is_refused_unless_lifted(
    model_dir, experts, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(low_rank, "VLLM_MAX_LORA_RANK", 16)  # the tiny layers have rank 64
    argv = ["export", "--model", model_dir, "--expert", f"math={experts['math']}", "--lora-energy", 1.0]
    code, _, err = run([*argv, "--output-dir", tmp_path / "capped"], capsys)
    assert code == 2 and "max_lora_rank 16" in err and "--lora-rank" in err
    code, _, err = run([*argv, "--no-rank-cap", "--output-dir", tmp_path / "uncapped"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "uncapped" / "adapter_config.json").read_text())["r"] == 64


def test_several_experts_need_alpha(model_dir, experts, tmp_path, capsys):
    argv = ["export", "--model", model_dir, *expert_args(experts), "--merged", "--output-dir", tmp_path]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--alpha" in err


def test_two_lora_exports_served_per_row_with_peft_adapter_names(
    model_dir, experts, tmp_path, capsys, input_ids
):
    for name, path in experts.items():
        argv = ["export", "--model", model_dir, "--expert", f"{name}={path}", "--lora-energy", 1.0]
        assert run([*argv, "--output-dir", tmp_path / name], capsys)[0] == 0
    served = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "math", adapter_name="math"
    ).eval()
    served.load_adapter(tmp_path / "code", adapter_name="code")
    ids = input_ids[:2] % served.config.vocab_size
    rows = logits(served, ids, adapter_names=["math", "code"])
    for row, name in enumerate(("math", "code")):
        alone = logits(svf_reference(model_dir, {name: experts[name]}), ids[row : row + 1])
        torch.testing.assert_close(rows[row : row + 1], alone, atol=ATOL, rtol=ATOL)


def test_merged_export_of_a_tied_lm_head_unties_it(tmp_path, input_ids):
    from peft_svf.cli.export import export_merged

    def make():
        torch.manual_seed(0)
        base = make_tiny_llama()
        base.config.tie_word_embeddings = True
        base.tie_weights()
        return base

    base = make()
    assert base.lm_head.weight is base.model.embed_tokens.weight
    embeddings = base.model.embed_tokens.weight.detach().clone()
    model = svf_model(lambda: base, target_modules=["q_proj", "lm_head"])
    expected = logits(model, input_ids)
    export_merged(model, "default", tiny_tokenizer(), tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(merged, input_ids), expected, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(merged.model.embed_tokens.weight, embeddings)
    assert merged.lm_head.weight is not merged.model.embed_tokens.weight


def test_merged_export_refuses_a_quantised_base(tmp_path):
    from peft_svf.cli.export import export_merged

    model = svf_model(make_tiny_llama)
    for layer in svf_layers(model).values():
        layer.get_base_layer().weight.data = layer.get_base_layer().weight.data.to(torch.int8)
    with pytest.raises(ValueError, match="quantised"):
        export_merged(model, "default", tiny_tokenizer(), tmp_path)
