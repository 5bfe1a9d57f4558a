"""Task identification: balanced (question, label) rows from the experts' training sets, and its reward."""

from collections import Counter

from peft_svf.tasks import get_task
from peft_svf.tasks.classification import (
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
        user = row["prompt"][-1]["content"]
        assert row["question"] in user and "\\boxed{}" in user
        # the question is the source task's prompt text, which contains the source row's question
        assert any(q in row["question"] for q in sources[row["label"]])
    assert data["label"] != sorted(data["label"])  # shuffled
    assert build_task_id_dataset(EXPERTS, n_per_task=20, seed=3)["question"] == data["question"]


def test_validation_rows_come_from_the_validation_splits():
    valid = build_task_id_dataset({"math": "offline_math"}, split="valid", n_per_task=5)
    expected = {p[-1]["content"] for p in get_task("offline_math").load("valid").select(range(5))["prompt"]}
    assert set(valid["question"]) == expected


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
    reward = task_id_reward()
    completions = ["\\boxed{math}", "\\boxed{code}", "math", "\\boxed{others}"]
    out = reward(completions, label=["math", "math", "math", "math"], labels_offered=[labels] * 4)
    assert out == [1.0, -1.0, -1.0, -1.0]
    # a rollout can stop once the first box has closed: what follows never changes the reward
    done = reward.completion_done
    assert not done("Classification: \\boxed{ma") and done("Classification: \\boxed{math}")
    assert reward(["\\boxed{math} no, \\boxed{code}"], label=["math"], labels_offered=[labels]) == [1.0]
