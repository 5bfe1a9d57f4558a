"""TRL-style reward functions (+1 correct, -1 otherwise, as in the paper) and a checked way to call them.

Every reward here has TRL's signature ``reward(completions, **columns) -> list[float]``: ``completions``
are strings or conversational lists of messages, and each dataset column arrives as a list with
one value per completion. So they work unchanged in ``trl.GRPOTrainer`` and in peft-svf's trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .extract import (
    code_block_closed,
    extract_boxed,
    extract_choice,
    extract_code,
    extract_numeric_answer,
    first_number_complete,
    math_answers_equal,
    parse_number,
)
from .grader import TestSuite, assert_tests, check_function_tests, grade
from .sandbox import SandboxLimits

__all__ = [
    "CORRECT", "WRONG", "RewardError", "RewardFunc", "assert_tests", "check_function_tests", "checked_reward_call",
    "choice_reward", "code_reward", "completion_text", "math_reward", "numeric_reward", "reward_name",
    "stop_condition",
]  # fmt: skip

RewardFunc = Callable[..., list[float]]

CORRECT, WRONG = 1.0, -1.0


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The generated text of a completion, whether TRL passed a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant")


def _score(ok: bool) -> float:
    return CORRECT if ok else WRONG


def _named(name: str, func: RewardFunc) -> RewardFunc:
    # TRL names reward columns after __name__; give each closure a readable one.
    func.__name__ = func.__qualname__ = name
    return func


def numeric_reward(
    answer_column: str = "answer", position: str = "last", name: str = "numeric_reward", explicit: bool = True
) -> RewardFunc:
    """Reward for a numeric answer (GSM8K-style ``#### 72`` references or plain numbers) compared exactly.

    ``position`` picks the number when the model gives no ``####``/``\\boxed{}`` answer: ``"last"`` for
    chain-of-thought, ``"first"`` or ``"result"`` (a restated "3 + 5 = 8" reads 8) for "answer with just
    the number" prompts; see :func:`peft_svf.tasks.extract.extract_numeric_answer`. ``explicit=False``
    ignores ``####``/``\\boxed{}``; with ``"first"`` the reward is then fixed once the first number is
    written out, so it declares ``completion_done`` and generation can stop there.
    """

    def reward(completions: list, **columns: Any) -> list[float]:
        scores = []
        for completion, reference in zip(completions, columns[answer_column], strict=True):
            ref = str(reference)
            gold = parse_number(ref.split("####")[-1])
            pred = extract_numeric_answer(completion_text(completion), position=position, explicit=explicit)
            scores.append(_score(gold is not None and pred == gold))
        return scores

    if position == "first" and not explicit:
        reward.completion_done = first_number_complete
    return _named(name, reward)


def math_reward(answer_column: str = "answer", name: str = "math_reward") -> RewardFunc:
    """Reward for MATH: the last ``\\boxed{}`` of the completion against the reference, both normalised."""

    def reward(completions: list, **columns: Any) -> list[float]:
        return [
            _score(math_answers_equal(extract_boxed(completion_text(c)), str(ref)))
            for c, ref in zip(completions, columns[answer_column], strict=True)
        ]

    return _named(name, reward)


def choice_reward(answer_column: str = "answer", labels_column: str = "choice_labels", name: str = "choice_reward") -> RewardFunc:
    """Reward for multiple choice: the option letter the model chose against the answer key."""

    def reward(completions: list, **columns: Any) -> list[float]:
        return [
            _score(extract_choice(completion_text(c), list(labels)) == str(ref))
            for c, ref, labels in zip(completions, columns[answer_column], columns[labels_column], strict=True)
        ]

    return _named(name, reward)


def code_reward(
    tests: Callable[[dict[str, Any]], TestSuite],
    limits: SandboxLimits | None = None,
    name: str = "code_reward",
) -> RewardFunc:
    """Reward for code: ``tests(row)`` (:func:`assert_tests` for MBPP-style rows, :func:`check_function_tests`
    for HumanEval-style ones) turns the row's tests into a :class:`~peft_svf.tasks.grader.TestSuite`; the
    model's code is run once in the sandbox on the tests' inputs and scores +1 only when every case passes,
    judged in this process (see :mod:`peft_svf.tasks.grader`: the expected values never reach the program).
    ``limits`` default to ``grader.GRADER_LIMITS`` (the sandbox's, with 1 MiB of output for the result lines)."""

    def reward(completions: list, **columns: Any) -> list[float]:
        keys = [k for k, v in columns.items()
                if not isinstance(v, (str, bytes, dict)) and hasattr(v, "__len__") and len(v) == len(completions)]  # fmt: skip
        suites = [tests({k: columns[k][i] for k in keys}) for i in range(len(completions))]
        codes = [extract_code(completion_text(c)) for c in completions]
        return [_score(verdict.passed) for verdict in grade(codes, suites, limits)]

    reward.completion_done = code_block_closed  # it reads the first code block only
    return _named(name, reward)


def stop_condition(reward_funcs: RewardFunc | Sequence[RewardFunc]) -> Callable[[str], bool] | None:
    """When a completion can stop: once every reward function's ``completion_done(text)`` holds, the text that
    would follow cannot change any reward. None when a function declares no such point (it may read it all).

    A reward function declares ``completion_done`` only if its value for any continuation of a text where it
    holds is its value for that text (``code_reward``: the first fenced block has closed). Generation stopped
    there scores the same and costs what the answer costs, not the prose after it.
    """
    funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    checks = [getattr(func, "completion_done", None) for func in funcs]
    if not checks or any(check is None for check in checks):
        return None
    return lambda text: all(check(text) for check in checks)


class RewardError(RuntimeError):
    """A reward function misbehaved; the message names the function and the offending sample."""


def reward_name(func: Callable[..., Any]) -> str:
    """The name TRL would log a reward function under."""
    return getattr(func, "__name__", None) or type(func).__name__


def checked_reward_call(
    func: RewardFunc,
    completions: Sequence[Any],
    prompts: Sequence[Any] | None = None,
    **columns: Any,
) -> list[float]:
    """Call a reward function and refuse its output unless it is one finite float per completion.

    A reward that raises, returns NaN/inf, ``None`` or the wrong number of values would otherwise
    corrupt a training step silently (or fail deep inside the loss); here the error names the
    function and the first offending sample's index, prompt and completion.
    """
    name = reward_name(func)

    def sample(i: int) -> str:
        prompt = None
        if prompts is not None:
            p = prompts[i]
            prompt = p if isinstance(p, str) else " | ".join(str(m.get("content", "")) for m in p)
        return f"sample {i} (prompt={str(prompt)[:200]!r}, completion={completion_text(completions[i])[:200]!r})"

    extra = {} if prompts is None else {"prompts": list(prompts)}
    try:
        values = func(completions=list(completions), **extra, **columns)
    except Exception as exc:  # a reward crash must say which reward and batch
        raise RewardError(
            f"reward function {name!r} raised {type(exc).__name__}: {exc} on a batch of {len(completions)} "
            f"completions; first: {sample(0) if completions else 'none'}"
        ) from exc
    try:
        values = list(values)
    except TypeError as exc:
        raise RewardError(f"reward function {name!r} returned {type(values).__name__}, not a list of floats") from exc
    if len(values) != len(completions):
        raise RewardError(
            f"reward function {name!r} returned {len(values)} values for {len(completions)} completions"
        )
    out = []
    for i, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise RewardError(f"reward function {name!r} returned {value!r} (not a number) for {sample(i)}") from exc
        if not math.isfinite(number):
            raise RewardError(f"reward function {name!r} returned {value!r} for {sample(i)}")
        out.append(number)
    return out
