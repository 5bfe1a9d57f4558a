"""SVF on the real embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_svf import SVFConfig, count_svf_parameters
from peft_svf.embedded import load_embedded_model

pytestmark = pytest.mark.embedded


def test_identity_adapter_on_embedded_model_and_parameter_count():
    model, tokenizer = load_embedded_model()
    prompts = ["What is 7 + 5?", "Write a Python function that reverses a list."]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
    config = SVFConfig()
    expected_count = count_svf_parameters(model, config)
    # 30 layers x (q, o, gate, up, down: 576 each; k, v: 192 each)
    assert expected_count == 30 * (5 * 576 + 2 * 192)
    peft_model = get_peft_model(model, config)
    assert peft_model.get_nb_trainable_parameters()[0] == expected_count
    with torch.no_grad():
        actual = peft_model(**batch).logits
    assert (actual - expected).abs().max().item() <= 1e-4  # the spec's bound; in fact exact:
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_model_option_loads_the_embedded_model_in_the_asked_dtype(dtype):
    from peft_svf.embedded import load_model_or_embedded

    reference, _ = load_embedded_model()  # float32, the cache's own precision
    model, tokenizer = load_model_or_embedded(None, dtype)
    expected = torch.float32 if dtype == "auto" else torch.bfloat16
    assert model.dtype == expected and tokenizer.eos_token_id == 2
    for (name, param), ref in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(param, ref.to(expected)), name
