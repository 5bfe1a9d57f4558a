"""Calling reward functions the TRL way, with errors that say which function and which sample failed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

RewardFunc = Callable[..., Sequence[float | None]]


def reward_func_name(func: RewardFunc) -> str:
    """Name used in logs (``rewards/<name>/mean``) and error messages."""
    return getattr(func, "__name__", type(func).__name__)


def _describe(prompts: list[Any], completions: list[Any], index: int) -> str:
    return f"sample {index} (prompt={prompts[index]!r}, completion={completions[index]!r})"


def _first_failing_sample(
    func: RewardFunc, prompts: list[Any], completions: list[Any], kwargs: dict[str, Any]
) -> int | None:
    """Re-run ``func`` one sample at a time to find which sample makes it raise."""
    for i in range(len(prompts)):
        single = {k: v[i : i + 1] if isinstance(v, list) else v for k, v in kwargs.items()}
        try:
            func(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **single)
        except Exception:
            return i
    return None


def score_completions(
    reward_funcs: Sequence[RewardFunc],
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    reward_kwargs: dict[str, Any],
) -> torch.Tensor:
    """Rewards as a ``(num_samples, num_funcs)`` float tensor.

    Each function is called as in TRL: ``func(prompts=, completions=, completion_ids=, **columns)`` where
    the columns are the dataset's other fields, one value per sample. Unlike TRL, ``None`` is not read as
    "not applicable": a missing, NaN or infinite reward, a wrong number of rewards or an exception is an
    error naming the function and the sample, because a silent NaN would poison the baseline of the batch.
    """
    n = len(prompts)
    kwargs = {"completion_ids": completion_ids, **reward_kwargs}
    columns = []
    for func in reward_funcs:
        name = reward_func_name(func)
        try:
            values = list(func(prompts=prompts, completions=completions, **kwargs))
        except Exception as error:
            index = _first_failing_sample(func, prompts, completions, kwargs)
            where = _describe(prompts, completions, index) if index is not None else f"a batch of {n} samples"
            raise RuntimeError(f"Reward function '{name}' raised {error!r} on {where}.") from error
        if len(values) != n:
            raise ValueError(
                f"Reward function '{name}' returned {len(values)} rewards for {n} completions; it must return "
                "exactly one reward per completion."
            )
        for i, value in enumerate(values):
            if value is None or not math.isfinite(float(value)):
                raise ValueError(
                    f"Reward function '{name}' returned {value!r} for {_describe(prompts, completions, i)}; "
                    "rewards must be finite numbers."
                )
        columns.append(torch.tensor([float(v) for v in values], dtype=torch.float32))
    return torch.stack(columns, dim=1)
