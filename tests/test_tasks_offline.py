"""The offline suite: deterministic, properly split, and its rewards agree with independently computed answers."""

import re

import pytest

from peft_svf.tasks import (
    OFFLINE_TRAIN_TASKS,
    OFFLINE_UNSEEN_TASKS,
    checked_reward_call,
    get_task,
    list_tasks,
)
from peft_svf.tasks.offline import _CATEGORIES

ALL = (*OFFLINE_TRAIN_TASKS, "offline_reasoning_letters", *OFFLINE_UNSEEN_TASKS)  # letters: kept for reference


def rewards(name, data, completions):
    columns = {c: list(data[c]) for c in data.column_names if c != "prompt"}
    return checked_reward_call(get_task(name).reward, completions, list(data["prompt"]), **columns)


def test_registered_with_domains_and_tags():
    assert set(list_tasks(tag="offline")) == set(ALL)
    assert set(list_tasks(tag="unseen")) == set(OFFLINE_UNSEEN_TASKS)
    assert [get_task(t).domain for t in OFFLINE_TRAIN_TASKS] == ["math", "code", "reasoning"]
    assert [get_task(t).domain for t in OFFLINE_UNSEEN_TASKS] == ["math", "code", "reasoning"]


@pytest.mark.parametrize("name", ALL)
def test_seeded_and_split(name):
    task = get_task(name)
    train, valid, test = task.load("train"), task.load("valid"), task.load("test")
    assert (len(train), len(valid), len(test)) == (1000, 1000, 500)
    assert task.load("test")["question"] == test["question"]  # same seed, same items
    assert task.load("test", seed=1)["question"] != test["question"]
    assert len(set(test["question"])) == len(test)
    prompt = test[0]["prompt"]
    assert prompt == [{"role": "user", "content": prompt[0]["content"]}]
    if name not in OFFLINE_UNSEEN_TASKS:  # trained tasks are tested on questions never seen in training
        assert not set(test["question"]) & (set(train["question"]) | set(valid["question"]))


def test_math_answers_match_the_question():
    data = get_task("offline_math").load("test").select(range(100))
    for row in data:
        a, b = map(int, re.findall(r"\d+", row["question"]))
        assert int(row["answer"]) == (a + b if "more" in row["question"] else a - b)
    golds = list(data["answer"])
    assert rewards("offline_math", data, [f"{g}. Because..." for g in golds]) == [1.0] * 100
    assert rewards("offline_math", data, [f"{int(g) + 1}" for g in golds]) == [-1.0] * 100


def test_math_unseen_answers_and_a_boxed_answer_wins():
    data = get_task("offline_math_unseen").load("test").select(range(100))
    for row in data:
        a, op, b = re.search(r"\$(\d+) (\\times|-) (\d+)\$", row["question"]).groups()
        assert int(row["answer"]) == (int(a) * int(b) if op == "\\times" else int(a) - int(b))
    golds = list(data["answer"])
    assert rewards("offline_math_unseen", data, [f"Maybe 1000. So \\boxed{{{g}}}" for g in golds]) == [1.0] * 100
    assert rewards("offline_math_unseen", data, [f"$x = {g}$" for g in golds]) == [1.0] * 100
    assert rewards("offline_math_unseen", data, [f"\\boxed{{{int(g) + 1}}} or {g}" for g in golds]) == [-1.0] * 100


def test_reasoning_answer_is_the_asked_extreme_and_the_first_number_counts():
    data = get_task("offline_reasoning").load("test").select(range(100))
    words = set()
    for row in data:
        word, *numbers = re.fullmatch(r"Which number is the (\w+): (\d+), (\d+) or (\d+)\?", row["question"]).groups()
        words.add(word)
        assert int(row["answer"]) == {"largest": max, "smallest": min}[word](map(int, numbers))
    assert words == {"largest", "smallest"}
    golds = list(data["answer"])
    assert rewards("offline_reasoning", data, [f"The {g} is it." for g in golds]) == [1.0] * 100
    # the first number is the answer: naming another option first is wrong even if the right one follows
    others = [re.findall(r"\d+", q.replace(g, "", 1))[0] for q, g in zip(data["question"], golds, strict=True)]
    assert rewards("offline_reasoning", data, [f"{o}, not {g}" for o, g in zip(others, golds, strict=True)]) == [-1.0] * 100


def test_reasoning_letters_answer_is_the_largest_option():
    data = get_task("offline_reasoning_letters").load("test").select(range(100))
    for row in data:
        options = dict(re.findall(r"([A-C])\) (\d+)", row["question"]))
        assert row["answer"] == max(options, key=lambda k: int(options[k]))
    assert rewards("offline_reasoning_letters", data, [f"The answer is {a}" for a in data["answer"]]) == [1.0] * 100
    wrong = [next(label for label in "ABC" if label != a) for a in data["answer"]]
    assert rewards("offline_reasoning_letters", data, wrong) == [-1.0] * 100


def test_reasoning_unseen_answer_belongs_to_the_category():
    data = get_task("offline_reasoning_unseen").load("test").select(range(100))
    for row in data:
        category = re.search(r"Which of these is (.+?)\?", row["question"]).group(1)
        options = dict(re.findall(r"([A-D])\) ([a-z ]+?)(?= [A-D]\)|$)", row["question"]))
        members = [k for k, word in options.items() if word in _CATEGORIES[category]]
        assert members == [row["answer"]]
    assert rewards("offline_reasoning_unseen", data, list(data["answer"])) == [1.0] * 100


@pytest.mark.parametrize(("name", "column"), [("offline_code", "code"), ("offline_code_unseen", "canonical_solution")])
def test_code_reference_passes_and_a_broken_one_fails(name, column):
    data = get_task(name).load("test").select(range(12))
    good = [f"```python\n{c}```" for c in data[column]]
    assert rewards(name, data, good) == [1.0] * 12
    broken = [c.replace("return ", "return None and ") for c in good]
    assert rewards(name, data, broken) == [-1.0] * 12
