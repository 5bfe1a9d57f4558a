"""Reward functions: TRL's calling convention, +1/-1 scores, and loud failures for broken rewards."""

import math

import pytest

from peft_svf.tasks.rewards import (
    RewardError,
    assert_tests,
    check_function_tests,
    checked_reward_call,
    choice_reward,
    code_reward,
    completion_text,
    math_reward,
    numeric_reward,
    stop_condition,
)


def _trl_kwargs(n):
    """The extra keyword arguments trl.GRPOTrainer passes every reward function."""
    return {"completion_ids": [[1, 2]] * n, "trainer_state": object(), "log_extra": print, "log_metric": print}


def test_completion_text_accepts_strings_and_messages():
    assert completion_text("42") == "42"
    assert completion_text([{"role": "assistant", "content": "4"}, {"role": "assistant", "content": "2"}]) == "42"


def test_numeric_reward_with_trl_conversational_inputs():
    reward = numeric_reward()
    prompts = [[{"role": "user", "content": "q"}]] * 3
    completions = [[{"role": "assistant", "content": c}] for c in ["So 2,430 in total", "#### 18", "I think 5"]]
    answers = ["x #### 2,430", "#### 18", "#### 6"]
    assert reward(prompts=prompts, completions=completions, answer=answers, **_trl_kwargs(3)) == [1.0, 1.0, -1.0]
    assert reward.__name__ == "numeric_reward"


def test_first_number_policy():
    reward = numeric_reward(position="first")
    assert reward(["7. Because 3 + 4 is 7, not 8", "3 + 4 = 7"], answer=["7", "7"]) == [1.0, -1.0]


def test_math_reward_requires_a_box_and_normalises():
    reward = math_reward()
    completions = ["so \\boxed{\\dfrac{1}{2}}", "the answer is 1/2", "\\boxed{0.5}", "\\boxed{2}"]
    assert reward(completions, answer=["\\frac{1}{2}"] * 4) == [1.0, -1.0, 1.0, -1.0]


def test_choice_reward():
    reward = choice_reward()
    out = reward(["B", "The answer is A", "C) because"], answer=["B", "B", "C"], choice_labels=[["A", "B", "C"]] * 3)
    assert out == [1.0, -1.0, 1.0]


def test_assert_tests_reward():
    reward = code_reward(assert_tests)
    rows = {"test_list": [["assert sq(3) == 9", "assert sq(-2) == 4"]] * 3, "test_setup_code": ["", "", ""]}
    completions = ["```python\ndef sq(x):\n    return x * x\n```", "def sq(x):\n    return 2 * x", "nothing useful"]
    assert reward(completions, **rows, **_trl_kwargs(3)) == [1.0, -1.0, -1.0]


def test_code_reward_is_done_when_its_first_block_closes():
    """Cut where ``stop_condition`` says, the completion scores what the whole one scores: the second block (which
    would redefine ``sq`` wrongly) is never read."""
    reward = code_reward(assert_tests)
    done = stop_condition(reward)
    whole = "```python\ndef sq(x):\n    return x * x\n```\nOr:\n```python\ndef sq(x):\n    return 0\n```"
    cut = whole[: next(k for k in range(len(whole) + 1) if done(whole[:k]))]
    assert cut == "```python\ndef sq(x):\n    return x * x\n```"
    rows = {"test_list": [["assert sq(3) == 9"]] * 2, "test_setup_code": ["", ""]}
    assert reward([whole, cut], **rows) == [1.0, 1.0]


def test_first_number_reward_without_explicit_answers_is_done_once_its_number_is_written():
    """"Answer with just the number": the first number decides, so generation may stop right after it; the cut and
    the whole completion score alike, and a later ``####`` no longer overrules the stated number."""
    reward = numeric_reward(position="first", explicit=False)
    done = stop_condition(reward)
    whole = "87 is the largest.\n#### 45"
    cut = whole[: next(k for k in range(len(whole) + 1) if done(whole[:k]))]
    assert cut == "87 "
    assert reward([whole, cut, "45"], answer=["87", "87", "87"]) == [1.0, 1.0, -1.0]
    assert numeric_reward(position="first")([whole], answer=["87"]) == [-1.0]  # with explicit answers, #### wins
    assert stop_condition(numeric_reward(position="first")) is None
    assert stop_condition(numeric_reward(position="result", explicit=False)) is None  # a later "=" may still change it


def test_stop_condition_needs_every_reward_to_declare_its_end():
    code = code_reward(assert_tests)
    assert stop_condition(numeric_reward()) is None  # reads the whole text
    assert stop_condition([code, numeric_reward()]) is None
    assert stop_condition([]) is None

    def first_line(completions, **_):
        return [1.0 if c.startswith("x") else -1.0 for c in completions]

    first_line.completion_done = lambda text: "\n" in text
    both = stop_condition([code, first_line])
    block = "```python\nx = 1\n```"
    assert [both(t) for t in (block[:-3], "x\n", "`" * 3, block)] == [False, False, False, True]


def test_check_function_tests_accept_full_function_or_body():
    stub = 'def inc(x):\n    """Return x + 1."""\n'
    row = {"stub": stub, "entry_point": "inc", "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
    reward = code_reward(check_function_tests)
    completions = ["```python\ndef inc(x):\n    return x + 1\n```", "    return x + 1\n", "    return x\n"]
    columns = {k: [v] * 3 for k, v in row.items()}
    assert reward(completions, **columns) == [1.0, 1.0, -1.0]


def _batch():
    return {"prompts": ["p0", "p1"], "completions": ["c0", "the culprit"], "answer": ["1", "2"]}


def test_checked_call_passes_good_rewards_through():
    batch = _batch()
    assert checked_reward_call(numeric_reward(), batch["completions"], batch["prompts"], answer=batch["answer"]) == [
        -1.0,
        -1.0,
    ]


def test_checked_call_names_a_raising_function():
    def exploding_reward(completions, **kwargs):
        raise ZeroDivisionError("boom")

    with pytest.raises(RewardError, match=r"'exploding_reward' raised ZeroDivisionError: boom.*'p0'"):
        checked_reward_call(exploding_reward, ["c0", "c1"], ["p0", "p1"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, None, "high"])
def test_checked_call_names_the_sample_with_a_bad_value(bad):
    def flaky_reward(completions, **kwargs):
        return [1.0, bad]

    with pytest.raises(RewardError, match=r"'flaky_reward' returned .* sample 1 .*'p1'.*'the culprit'"):
        checked_reward_call(flaky_reward, ["c0", "the culprit"], ["p0", "p1"])


def test_checked_call_rejects_wrong_length():
    def short_reward(completions, **kwargs):
        return [1.0]

    with pytest.raises(RewardError, match=r"'short_reward' returned 1 values for 2 completions"):
        checked_reward_call(short_reward, ["a", "b"])


def test_checked_call_formats_conversational_prompts():
    def nan_reward(completions, **kwargs):
        return [math.nan]

    prompt = [[{"role": "system", "content": "sys"}, {"role": "user", "content": "what is 2+2"}]]
    with pytest.raises(RewardError, match="what is 2\\+2"):
        checked_reward_call(nan_reward, [[{"role": "assistant", "content": "4"}]], prompt)
