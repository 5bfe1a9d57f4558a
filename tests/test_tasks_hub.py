"""The paper's benchmark loaders, run on fixture files in the Hub's exact schema (no Hub access here)."""

from pathlib import Path

import pytest

from peft_svf.tasks import checked_reward_call, get_task
from peft_svf.tasks.benchmarks_hub import GSM8K_SYSTEM_PROMPT

FIXTURES = Path(__file__).parent / "fixtures"


def files(name):
    return {s: str(FIXTURES / name / f"{s}.jsonl") for s in ("train", "test") if (FIXTURES / name / f"{s}.jsonl").exists()}


def rewards(task, data, completions):
    columns = {c: list(data[c]) for c in data.column_names if c != "prompt"}
    return checked_reward_call(get_task(task).reward, completions, list(data["prompt"]), **columns)


def _raw_lines(name, split):
    import json

    return [json.loads(line) for line in (FIXTURES / name / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", ["gsm8k", "math", "mbpp", "arc_easy", "arc_challenge"])
def test_splits_follow_the_authors(task):
    """train/valid are the even/odd rows of the official train split; test is the official test split."""
    name = task
    raw_train, raw_test = _raw_lines(name, "train"), _raw_lines(name, "test")
    key = {"gsm8k": "question", "math": "problem", "mbpp": "task_id", "arc_easy": "id", "arc_challenge": "id"}[task]
    for split, expected in [("train", raw_train[0::2]), ("valid", raw_train[1::2]), ("test", raw_test)]:
        data = get_task(task).load(split, data_files=files(name))
        assert data[key] == [row[key] for row in expected]
        prompt = data[0]["prompt"]
        assert isinstance(prompt, list) and prompt[-1]["role"] == "user"


def test_gsm8k_prompt_and_reward():
    data = get_task("gsm8k").load("test", data_files=files("gsm8k"))
    assert data[0]["prompt"][0] == {"role": "system", "content": GSM8K_SYSTEM_PROMPT}
    assert data[0]["question"] in data[0]["prompt"][1]["content"]
    golds = [a.split("####")[-1].strip() for a in data["answer"]]
    right = [f"Working...\n#### {g}" for g in golds]
    wrong = [f"#### {int(g.replace(',', '')) + 1}" for g in golds]
    assert rewards("gsm8k", data, right) == [1.0] * len(data)
    assert rewards("gsm8k", data, wrong) == [-1.0] * len(data)


def test_math_answers_come_from_the_boxed_solution():
    data = get_task("math").load("test", data_files=files("math"))
    assert "\\boxed{}" in data[0]["prompt"][0]["content"]
    assert list(data["answer"]) == ["10", "\\frac{1}{2}", "\\{-3, 3\\}", "\\dfrac{1}{3}"]
    spelled_differently = ["\\boxed{10}", "\\boxed{0.5}", "\\boxed{\\{-3,3\\}}", "so \\boxed{\\frac13}"]
    assert rewards("math", data, spelled_differently) == [1.0] * 4
    assert rewards("math", data, ["10", "\\boxed{2}", "\\boxed{3}", "\\boxed{1/4}"]) == [-1.0] * 4


@pytest.mark.parametrize("config", ["full", "sanitized"])
def test_mbpp_reference_code_passes_and_wrong_code_fails(config):
    data_files = files("mbpp") if config == "full" else {"test": str(FIXTURES / "mbpp_sanitized" / "test.jsonl")}
    data = get_task("mbpp").load("test", data_files=data_files, name=config)
    assert data[0]["test_list"][0] in data[0]["prompt"][0]["content"]
    assert rewards("mbpp", data, [f"```python\n{c}\n```" for c in data["code"]]) == [1.0] * len(data)
    assert rewards("mbpp", data, ["```python\ndef nothing():\n    pass\n```"] * len(data)) == [-1.0] * len(data)


def test_humaneval_fixture_in_hub_schema(monkeypatch):
    from peft_svf.tasks import benchmarks_hub

    monkeypatch.setattr(benchmarks_hub, "humaneval_packaged_file", lambda: None)
    data = get_task("humaneval").load("test", data_files=files("humaneval"))
    assert data["entry_point"] == ["below_zero", "add"]
    assert rewards("humaneval", data, list(data["canonical_solution"])) == [1.0, 1.0]
    assert rewards("humaneval", data, ["    return None\n"] * 2) == [-1.0, -1.0]
    with pytest.raises(ValueError, match="no split"):
        get_task("humaneval").load("train")


def test_real_humaneval_from_the_pypi_package():
    data = get_task("humaneval").load("test")
    assert len(data) == 164 and len(set(data["task_id"])) == 164
    sample = data.select(range(0, 164, 8))  # 21 real problems keep the test short
    assert rewards("humaneval", sample, list(sample["canonical_solution"])) == [1.0] * len(sample)
    assert rewards("humaneval", sample, ["    pass\n"] * len(sample)) == [-1.0] * len(sample)


def test_arc_relabels_numeric_options_to_letters():
    data = get_task("arc_easy").load("train", data_files=files("arc_easy"))
    numeric = data[1]  # the fixture row labelled 1-4 with answerKey "3" (train split = even rows)
    assert numeric["choices"]["label"] == ["1", "2", "3", "4"]
    assert numeric["answer"] == "C" and numeric["choice_labels"] == ["A", "B", "C", "D"]
    assert "C. solid" in numeric["prompt"][0]["content"]
    test = get_task("arc_easy").load("test", data_files=files("arc_easy"))
    assert rewards("arc_easy", test, ["The answer is B", "C"]) == [1.0, 1.0]
    assert rewards("arc_easy", test, ["A", "The answer is E"]) == [-1.0, -1.0]
