"""Batched generation and task evaluation for any Hugging Face causal LM (a ``PeftModel`` included).

Evaluation is where experts are judged (paper tables report accuracy and accuracy / base accuracy),
and where most wall time goes on a CPU; so prompts are generated in batches, sorted by length to
waste little padding, left-padded as decoder-only models need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, StoppingCriteriaList

from ..prefix import generate_sharing_prefix
from ..prompts import render
from ..stopping import RowsDone
from ..tokens import ensure_pad_token
from .registry import Task, get_task
from .rewards import RewardFunc, checked_reward_call, stop_condition


@torch.inference_mode()
def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    progress: bool = True,
    desc: str = "generate",
    share_prompt_prefix: bool = True,
    stop_when: Callable[[str], bool] | None = None,
) -> list[list[str]]:
    """``num_return_sequences`` completions per prompt (chat prompts get the chat template), in input order.

    ``batch_size`` counts prompts; a batch generates ``batch_size * num_return_sequences`` sequences.
    ``share_prompt_prefix``: a model or ``PeftModel`` runs the tokens a batch's prompts start with once
    (:func:`~peft_svf.prefix.generate_sharing_prefix`); a ``SelfAdaptiveModel`` decides that itself.
    ``stop_when(text)`` ends a completion as soon as it holds (:func:`~peft_svf.tasks.rewards.stop_condition`).
    """
    if seed is not None:
        torch.manual_seed(seed)
    pad_id = ensure_pad_token(tokenizer)  # left padding needs one
    device = next(model.parameters()).device
    texts = [render(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list[list[str]] = [[] for _ in texts]
    plain_model = isinstance(model, PreTrainedModel | PeftModel)
    generate = partial(generate_sharing_prefix, model) if share_prompt_prefix and plain_model else model.generate
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                            padding_side="left", add_special_tokens=False).to(device)  # fmt: skip
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {
                "do_sample": False, "temperature": None, "top_p": None, "top_k": None}  # fmt: skip
            width = enc["input_ids"].shape[1]
            stopper = RowsDone(tokenizer, width, stop_when) if stop_when is not None else None
            if stopper is not None:
                sampling["stopping_criteria"] = StoppingCriteriaList([stopper])
            out = generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                           pad_token_id=pad_id, **sampling)  # fmt: skip
            new = out[:, width:]
            ends = stopper.ends(*new.shape) if stopper is not None else [new.size(1)] * new.size(0)
            decoded = tokenizer.batch_decode([ids[:end] for ids, end in zip(new, ends, strict=True)],
                                             skip_special_tokens=True)  # fmt: skip
            for j, i in enumerate(chunk):
                results[i] = decoded[j * num_return_sequences : (j + 1) * num_return_sequences]
            bar.update(len(chunk))
        bar.close()
    finally:
        model.train(was_training)
    return results


@dataclass
class EvalResult:
    """Accuracy on a split, the per-sample records behind it and, given a base accuracy, the normalised score."""

    accuracy: float
    n: int
    correct: int
    normalized_score: float | None
    records: list[dict[str, Any]] = field(repr=False)


def _resolve(
    task_or_dataset: str | Task | Dataset, split: str, reward: RewardFunc | None
) -> tuple[Dataset, RewardFunc, int | None]:
    if isinstance(task_or_dataset, str):
        task_or_dataset = get_task(task_or_dataset)
    if isinstance(task_or_dataset, Task):
        return task_or_dataset.load(split), reward or task_or_dataset.reward, task_or_dataset.max_new_tokens
    if reward is None:
        raise ValueError("evaluating a bare dataset needs reward=...")
    return task_or_dataset, reward, None


def _rewards(reward: RewardFunc, data: Dataset, completions: list[str]) -> list[float]:
    columns = {c: list(data[c]) for c in data.column_names if c != "prompt"}
    return checked_reward_call(reward, completions, prompts=list(data["prompt"]), **columns)


def evaluate(
    model: Any,
    task_or_dataset: str | Task | Dataset,
    tokenizer: Any,
    split: str = "test",
    n: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    reward: RewardFunc | None = None,
    base_accuracy: float | None = None,
    progress: bool = True,
    share_prompt_prefix: bool = True,
) -> EvalResult:
    """Greedy accuracy of ``model`` on a task's split (or a dataset with ``reward``); the first ``n`` items.

    A sample counts as correct when its reward is positive. ``normalized_score`` is
    ``accuracy / base_accuracy`` (the paper's number in parentheses) when ``base_accuracy`` is given.
    ``share_prompt_prefix``: see :func:`generate_completions` (off: the batched forward of releases before it,
    whose float rounding can differ on a near-tie).
    """
    data, reward, task_tokens = _resolve(task_or_dataset, split, reward)
    if n is not None:
        data = data.select(range(min(n, len(data))))
    completions = [c[0] for c in generate_completions(
        model, tokenizer, list(data["prompt"]), max_new_tokens=max_new_tokens or task_tokens or 256,
        batch_size=batch_size, progress=progress, desc="evaluate", share_prompt_prefix=share_prompt_prefix,
        stop_when=stop_condition(reward))]  # fmt: skip
    scores = _rewards(reward, data, completions)
    records = [
        {"index": i, "prompt": data[i]["prompt"], "completion": c, "reward": s, "correct": s > 0}
        for i, (c, s) in enumerate(zip(completions, scores, strict=True))
    ]
    correct = sum(r["correct"] for r in records)
    accuracy = correct / len(records) if records else 0.0
    normalized = None if not base_accuracy else accuracy / base_accuracy
    return EvalResult(
        accuracy=accuracy, n=len(records), correct=correct, normalized_score=normalized, records=records
    )


def pass_at_k(
    model: Any,
    task_or_dataset: str | Task | Dataset,
    tokenizer: Any,
    k: int = 8,
    split: str = "test",
    n: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    reward: RewardFunc | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Fraction of items where at least one of ``k`` sampled completions is correct: whether RL has a signal."""
    data, reward, task_tokens = _resolve(task_or_dataset, split, reward)
    if n is not None:
        data = data.select(range(min(n, len(data))))
    samples = generate_completions(
        model, tokenizer, list(data["prompt"]), max_new_tokens=max_new_tokens or task_tokens or 256,
        batch_size=batch_size, num_return_sequences=k, do_sample=True, temperature=temperature,
        seed=seed, progress=progress, desc=f"pass@{k}", stop_when=stop_condition(reward))  # fmt: skip
    flat = data.select([i for i in range(len(data)) for _ in range(k)])
    scores = _rewards(reward, flat, [c for group in samples for c in group])
    hits = sum(any(s > 0 for s in scores[i * k : (i + 1) * k]) for i in range(len(data)))
    return hits / len(data) if len(data) else 0.0
