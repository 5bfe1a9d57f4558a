"""Task identification: the prompt the dispatcher asks and the dataset that trains the classification expert.

The paper's prompt-based adaptation asks the base model to name a question's category inside
``\\boxed{}`` (Figure 3); the classification expert is an SVF expert trained with the same REINFORCE
recipe on (question from task k, label k) pairs drawn from the experts' own training sets, rewarded
+1 for the right label. Both use the prompt built here, so the expert learns exactly what the
dispatcher will ask.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from datasets import Dataset

from ..prompts import question_of
from .extract import extract_boxed, first_box_closed
from .registry import chat_prompt, get_task
from .rewards import CORRECT, WRONG, RewardFunc, completion_text

OTHERS = "others"
# The start of the answer the prompt asks for ("Classification: \\boxed{category}"), prefilled as the assistant's
# turn where the label is what matters: the first generated token is then the label. SmolLM2 writes "math" for
# nearly every question unprompted, and left to write the format itself z_c locked into that label in 6 of 9
# seeds; prefilled, in 5 of 9 (docs/trainer.md, 2026-12-08), but each probe costs about 2/3 of the time.
ASSISTANT_PREFIX = "Classification: \\boxed{"
# The name z_c's training task goes by: the recipe's tables (trainer.recipe) key on it.
TASK_IDENTIFICATION = "task_identification"
# Category descriptions from the paper's adaptation prompt (Figure 3).
DEFAULT_DESCRIPTIONS = {
    "code": "Questions asking for programming solutions",
    "math": "Questions involving mathematical calculations",
    "reasoning": "Questions requiring logical thinking",
    OTHERS: "Questions not clearly fit into above categories",
}


def classification_prompt(
    question: str,
    labels: list[str],
    descriptions: Mapping[str, str] | None = None,
    include_others: bool = True,
) -> list[dict[str, str]]:
    """The paper's adaptation prompt for ``labels`` (plus "others", meaning: use the base weights)."""
    descriptions = {**DEFAULT_DESCRIPTIONS, **(descriptions or {})}
    categories = [*labels, OTHERS] if include_others and OTHERS not in labels else list(labels)
    quoted = ", ".join(f"'{c}'" for c in categories[:-1]) + f", or '{categories[-1]}'"
    guide = "\n".join(
        f"{i}. {c.capitalize()}: {descriptions.get(c, f'Questions about {c}')}..."
        for i, c in enumerate(categories, 1)
    )
    text = (
        f"Analyze the given question and classify it into one of {len(categories)} categories: {quoted}. "
        f"Follow these guidelines:\n{guide}\n"
        "Instructions:\n- Consider the primary focus, skills, and knowledge required to answer the question.\n"
        "- If a question spans multiple categories, choose the most dominant one.\n"
        "- Provide your final classification within \\boxed{} notation. Example: \\boxed{"
        f"{categories[0]}}}\n\nFormat your response as follows:\nClassification: \\boxed{{category}}\n\n"
        f"Question: {question}"
    )
    return chat_prompt(text)


def parse_task_label(text: str, labels: list[str], fallback: str = OTHERS) -> str:
    """The label inside the first ``\\boxed{}``, case-insensitively; ``fallback`` when absent or unknown.

    The first: dispatch's pass 1 stops once it has closed (:func:`~peft_svf.tasks.extract.first_box_closed`), and
    so do the classification expert's rollouts, so that training rewards exactly what dispatch reads.
    """
    boxed = extract_boxed(text, first=True)
    if boxed is None:
        return fallback
    guess = boxed.replace("\\text{", "").replace("}", "").strip().strip("'\"").lower()
    matches = [label for label in labels if label.lower() == guess]
    return matches[0] if matches else fallback


def task_id_reward(
    label_column: str = "label",
    labels_column: str = "labels_offered",
    assistant_prefix: str = ASSISTANT_PREFIX,
    prefix_column: str = "assistant_prefix",
) -> RewardFunc:
    """+1 when the boxed category is the row's label, -1 otherwise (unparsable answers count as wrong).

    The completion is read after ``assistant_prefix``, the answer start its rows prefilled (the rows of
    :func:`build_task_id_dataset` record theirs in ``prefix_column``; a row prefilled otherwise is an error,
    since its completions would be misread). Where generation may stop depends on that prefix too.
    """

    def task_id_reward(completions: list, **columns: Any) -> list[float]:
        prefixes = columns.get(prefix_column)
        if prefixes is None or any(prefix != assistant_prefix for prefix in prefixes):
            raise ValueError(
                f"task_id_reward reads completions after the prefilled answer start {assistant_prefix!r}, but the "
                f"rows' {prefix_column!r} column is {'missing' if prefixes is None else sorted(set(prefixes))}; "
                "build the rows and the reward with the same assistant_prefix"
            )
        return [
            CORRECT
            if parse_task_label(assistant_prefix + completion_text(c), list(offered), fallback="") == label
            else WRONG
            for c, label, offered in zip(
                completions, columns[label_column], columns[labels_column], strict=True
            )
        ]

    # It reads the first box only, which the prefix may have opened.
    task_id_reward.completion_done = lambda text: first_box_closed(assistant_prefix + text)
    return task_id_reward


def build_task_id_dataset(
    tasks: Mapping[str, str],
    split: str = "train",
    n_per_task: int | None = None,
    seed: int = 0,
    descriptions: Mapping[str, str] | None = None,
    load_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    assistant_prefix: str = ASSISTANT_PREFIX,
) -> Dataset:
    """(question from task k, label k) rows for every ``label -> task name`` in ``tasks``, shuffled.

    Questions come from each task's ``split`` (use the experts' training splits to train the
    classifier and their validation splits to select it). Each task contributes ``n_per_task``
    questions (all when None) so that no label dominates. ``assistant_prefix`` (if any) is prefilled as the
    assistant's turn. Columns: ``prompt``, ``label``, ``task``, ``question``, ``labels_offered``,
    ``assistant_prefix``.
    """
    answer_start = [{"role": "assistant", "content": assistant_prefix}] if assistant_prefix else []
    labels = list(tasks)
    rows = []
    for label, name in tasks.items():
        data = get_task(name).load(split, **dict((load_kwargs or {}).get(name, {})))
        count = len(data) if n_per_task is None else min(n_per_task, len(data))
        for prompt in data.select(range(count))["prompt"]:
            question = question_of(prompt)
            rows.append({"prompt": classification_prompt(question, labels, descriptions) + answer_start,
                         "label": label, "task": name, "question": question, "labels_offered": labels,
                         "assistant_prefix": assistant_prefix})  # fmt: skip
    random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows)
