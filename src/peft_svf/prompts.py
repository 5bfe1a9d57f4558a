"""Prompts in and out of token ids: rendering chat prompts and recovering the question a prompt asks.

Training, evaluation and two-pass inference all render prompts here, so a prompt reads the same to the
model whichever of them feeds it. Pass 1 asks about the *question*, not the whole rendered chat: a caller
such as :func:`peft_svf.tasks.evaluate` hands ``generate`` token ids of a chat-templated prompt, so the
user turn is cut back out of the decoded text with markers learned from the tokenizer's own chat template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

Prompt = str | Sequence[dict[str, str]]

_SENTINEL = "\x00QUESTION\x00"


def render(tokenizer: Any, prompt: Prompt) -> str:
    """The text the model sees: a string as it is, chat messages through the tokenizer's chat template.

    The template opens the assistant's turn, or continues it when the last message is the assistant's
    (a prefilled answer), as TRL's ``maybe_apply_chat_template`` does. A tokenizer without a chat
    template gets the messages' contents, one per line.
    """
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    if getattr(tokenizer, "chat_template", None) is None:
        return "\n".join(str(message["content"]) for message in messages)
    prefilled = messages[-1].get("role") == "assistant"
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=not prefilled, continue_final_message=prefilled, tokenize=False
    )


def question_of(prompt: Prompt) -> str:
    """The question a prompt asks: the string itself, or the last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [str(m["content"]) for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt[-1]["content"])


def _loose(text: str) -> str:
    """A regex matching ``text`` whatever whitespace a tokenizer's decoding inserts or drops."""
    return r"\s*".join(re.escape(c) for c in text if not c.isspace())


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n :]


def user_turn_markers(tokenizer: Any) -> tuple[str, str] | None:
    """(text that opens a user turn, text that follows the last user turn up to the generation prompt)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    try:
        one = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
        )
        three = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
             {"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False,
        )  # fmt: skip
    except Exception:  # templates that reject these conversations: fall back to the whole text
        return None
    before_one, after = one.split(_SENTINEL, 1)
    before_three = three.split(_SENTINEL, 1)[0]
    opener = _common_suffix(before_one, before_three)
    return (opener, after) if opener.strip() else None


def question_from_text(tokenizer: Any, text: str, markers: tuple[str, str] | None) -> str:
    """Cut the last user turn out of a rendered chat prompt; plain text comes back as it is."""
    if markers is None:
        return text.strip()
    opener, closer = markers
    starts = list(re.finditer(_loose(opener), text))
    if not starts:
        return text.strip()
    question = text[starts[-1].end() :]
    end = re.search(_loose(closer) + r"\s*$", question) if closer.strip() else None
    return (question[: end.start()] if end else question).strip()


def questions_from_ids(
    tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> list[str]:
    """The question of every row of a (left- or right-padded) batch of prompt ids."""
    markers = user_turn_markers(tokenizer)
    questions = []
    for i, row in enumerate(input_ids):
        ids = row if attention_mask is None else row[attention_mask[i].bool()]
        text = tokenizer.decode(ids, skip_special_tokens=markers is None)
        questions.append(question_from_text(tokenizer, text, markers))
    return questions
