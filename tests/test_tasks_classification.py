"""Task identification: balanced (question, label) rows from the experts' training sets, and its reward."""

from collections import Counter

import pytest

from peft_svf.tasks import get_task
from peft_svf.tasks.classification import (
    ASSISTANT_PREFIX,
    OTHERS,
    build_task_id_dataset,
    classification_prompt,
    parse_task_label,
    task_id_reward,
)

EXPERTS = {"math": "offline_math", "code": "offline_code", "reasoning": "offline_reasoning"}


def test_dataset_pairs_each_question_with_its_task_label():
    data = build_task_id_dataset(EXPERTS, split="train", n_per_task=20, seed=3)
    assert len(data) == 60
    assert Counter(data["label"]) == {"math": 20, "code": 20, "reasoning": 20}
    sources = {label: set(get_task(name).load("train").select(range(20))["question"]) for label, name in EXPERTS.items()}
    for row in data:
        assert EXPERTS[row["label"]] == row["task"]
        # the answer's start is prefilled: the first token the model writes is the label
        assert row["prompt"][-1] == {"role": "assistant", "content": "Classification: \\boxed{"}
        assert row["assistant_prefix"] == ASSISTANT_PREFIX == "Classification: \\boxed{"
        user = row["prompt"][-2]["content"]
        assert row["question"] in user and "\\boxed{}" in user
        # the question is the source task's prompt text, which contains the source row's question
        assert any(q in row["question"] for q in sources[row["label"]])
    assert data["label"] != sorted(data["label"])  # shuffled
    assert build_task_id_dataset(EXPERTS, n_per_task=20, seed=3)["question"] == data["question"]


def test_validation_rows_come_from_the_validation_splits():
    valid = build_task_id_dataset({"math": "offline_math"}, split="valid", n_per_task=5)
    expected = {p[-1]["content"] for p in get_task("offline_math").load("valid").select(range(5))["prompt"]}
    assert set(valid["question"]) == expected
    unfilled = build_task_id_dataset({"math": "offline_math"}, split="valid", n_per_task=5, assistant_prefix="")
    assert [p[-1]["role"] for p in unfilled["prompt"]] == ["user"] * 5 and unfilled["assistant_prefix"] == [""] * 5


def test_prompt_follows_the_paper_and_offers_others():
    text = classification_prompt("What is 2+2?", ["code", "math", "reasoning"])[0]["content"]
    assert "classify it into one of 4 categories: 'code', 'math', 'reasoning', or 'others'" in text
    assert "Questions involving mathematical calculations" in text
    assert text.endswith("Question: What is 2+2?")


def test_label_parsing_and_reward():
    labels = ["math", "code", "reasoning"]
    assert parse_task_label("Classification: \\boxed{Math}", labels) == "math"
    assert parse_task_label("\\boxed{\\text{code}}", labels) == "code"
    assert parse_task_label("I think it's math", labels) == OTHERS
    assert parse_task_label("\\boxed{poetry}", labels) == OTHERS
    # the first box, where dispatch stops reading
    assert parse_task_label("\\boxed{code}, or maybe \\boxed{math}", labels) == "code"
    # written by the model itself (no prefilled answer start)
    reward = task_id_reward(assistant_prefix="")
    columns = dict(label=["math"] * 4, labels_offered=[labels] * 4, assistant_prefix=[""] * 4)
    completions = ["\\boxed{math}", "\\boxed{code}", "math", "\\boxed{others}"]
    assert reward(completions, **columns) == [1.0, -1.0, -1.0, -1.0]
    # a rollout can stop once the first box has closed: what follows never changes the reward
    done = reward.completion_done
    assert not done("Classification: \\boxed{ma") and done("Classification: \\boxed{math}")
    one = dict(label=["math"], labels_offered=[labels])
    assert reward(["\\boxed{math} no, \\boxed{code}"], **one, assistant_prefix=[""]) == [1.0]


def test_reward_reads_the_answer_after_the_prefilled_prefix():
    labels = ["math", "code", "reasoning"]
    reward = task_id_reward()
    columns = dict(label=["math"] * 4, labels_offered=[labels] * 4, assistant_prefix=[ASSISTANT_PREFIX] * 4)
    assert reward(["math}", "Math} and more", "code}", "\\boxed{math}"], **columns) == [1.0, 1.0, -1.0, -1.0]
    done = reward.completion_done  # the box the prefix opened closes with the completion's first brace
    assert not done("mat") and done("math}") and not done("\\boxed{math}")
    # rows prefilled with another start (or not recorded) would be misread: an error, not a silent -1
    with pytest.raises(ValueError, match="assistant_prefix"):
        reward(["math}"], label=["math"], labels_offered=[labels], assistant_prefix=[""])
    with pytest.raises(ValueError, match="missing"):
        reward(["math}"], label=["math"], labels_offered=[labels])
