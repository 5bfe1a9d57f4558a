"""The one prompt renderer and the special-token helpers that training, evaluation and inference share."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from transformers import GenerationConfig
from trl.data_utils import maybe_apply_chat_template

from peft_svf.prompts import question_of, render
from peft_svf.tasks.evaluate import generate_completions
from peft_svf.tokens import ensure_pad_token, eos_token_ids
from trainer_fixtures import tiny_llama, tiny_tokenizer

PROMPTS = [
    "plain text",
    [{"role": "user", "content": "what is 2+2?"}],
    [{"role": "system", "content": "be terse"}, {"role": "user", "content": "what is 2+2?"}],
    [{"role": "user", "content": "what is 2+2?"}, {"role": "assistant", "content": "it is"}],  # prefilled
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_render_reads_a_prompt_as_trl_does(prompt):
    tokenizer = tiny_tokenizer()
    assert render(tokenizer, prompt) == maybe_apply_chat_template({"prompt": prompt}, tokenizer)["prompt"]


def test_render_without_a_chat_template_joins_the_messages():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    assert render(tokenizer, PROMPTS[2]) == "be terse\nwhat is 2+2?"
    assert render(tokenizer, "plain text") == "plain text"


def test_evaluation_generates_for_chat_prompts_without_a_chat_template():
    """The evaluation renderer once lacked the fallback and raised; now it reads the prompt as pass 2 does."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    model = tiny_llama(len(tokenizer))
    chat = generate_completions(model, tokenizer, [PROMPTS[2]], max_new_tokens=4, progress=False)
    text = generate_completions(
        model, tokenizer, ["be terse\nwhat is 2+2?"], max_new_tokens=4, progress=False
    )
    assert chat == text and len(chat[0]) == 1


def test_question_of_is_the_last_user_message():
    conversation = [
        *PROMPTS[2],
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ]
    assert question_of(conversation) == "and 3+3?"
    assert question_of("plain text") == "plain text"
    assert question_of([{"role": "system", "content": "only"}]) == "only"


def test_ensure_pad_token_falls_back_to_eos_only_when_there_is_no_pad():
    tokenizer = tiny_tokenizer()
    without = copy.deepcopy(tokenizer)
    without.pad_token = None
    assert without.pad_token_id is None
    assert ensure_pad_token(without) == without.eos_token_id == without.pad_token_id
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    pad = tokenizer.convert_tokens_to_ids("<pad>")
    assert pad != tokenizer.eos_token_id and ensure_pad_token(tokenizer) == pad


@pytest.mark.parametrize(
    ("tokenizer_eos", "declared", "expected"),
    [
        (0, None, [0]),
        (0, 7, [0, 7]),
        (0, [7, 0, 9], [0, 7, 9]),
        (0, 0, [0]),
        (None, [7, 9], [7, 9]),
        (None, None, []),
    ],
)
def test_eos_token_ids_puts_the_tokenizers_first_and_each_id_once(tokenizer_eos, declared, expected):
    tokenizer = SimpleNamespace(eos_token_id=tokenizer_eos)
    assert eos_token_ids(tokenizer, GenerationConfig(eos_token_id=declared)) == expected
