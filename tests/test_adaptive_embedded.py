"""Self-adaptive inference on the real embedded SmolLM2-135M-Instruct: its chat template and tokenizer."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import AutoTokenizer

from peft_svf import SVFConfig
from peft_svf.adaptive import SelfAdaptiveModel
from peft_svf.adaptive.dispatch import ASSISTANT_PREFIX, label_first_tokens
from peft_svf.embedded import embedded_model_path, load_embedded_model
from peft_svf.prompts import questions_from_ids, render
from peft_svf.tasks import OFFLINE_UNSEEN_TASKS, get_task

pytestmark = pytest.mark.embedded


def unseen_prompts() -> list:
    return [get_task(name).load("test")[0]["prompt"] for name in OFFLINE_UNSEEN_TASKS]


def test_questions_come_back_out_of_smollm2_chat_ids_and_labels_have_distinct_tokens():
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    prompts = unseen_prompts()  # SmolLM2's template adds a default system turn
    enc = tokenizer([render(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                    padding_side="left", add_special_tokens=False)  # fmt: skip
    assert questions_from_ids(tokenizer, enc["input_ids"], enc["attention_mask"]) == [
        p[-1]["content"] for p in prompts
    ]
    tokens = label_first_tokens(tokenizer, ASSISTANT_PREFIX, ["math", "code", "reasoning", "others"])
    assert len(set(tokens.values())) == 4


def test_two_pass_generation_on_smollm2_leaves_the_model_unchanged():
    model, tokenizer = load_embedded_model()
    peft_model = get_peft_model(model, SVFConfig(init_noise_std=0.05), adapter_name="math")
    peft_model.add_adapter("code", SVFConfig(init_noise_std=0.05))
    peft_model.eval()
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    adaptive_model = SelfAdaptiveModel(peft_model, tokenizer, ["math", "code"], dispatcher="soft")
    out = adaptive_model.generate(prompts=unseen_prompts(), max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 3 and len(adaptive_model.last_decisions) == 3
    assert all(abs(sum(d.probabilities.values()) - 1) < 1e-6 for d in adaptive_model.last_decisions)
    assert all(torch.equal(v, peft_model.state_dict()[k]) for k, v in before.items())
