"""Tasks by name: what the trainer, the dispatchers, the demo and the benchmarks look up.

A :class:`Task` bundles a loader (``split -> datasets.Dataset`` with a conversational ``prompt`` column
plus the columns its reward reads) with a TRL-style reward. Built-in tasks register themselves when
:mod:`peft_svf.tasks` is imported; users add their own with :func:`register_task`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from .rewards import RewardFunc

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Task:
    """A named task. ``loader(split, **kwargs)`` returns the split; ``reward`` scores completions (+1/-1).

    ``domain`` ("math", "code", "reasoning", ...) is the expert family the task belongs to, and
    ``max_new_tokens`` the generation budget its answers need (used by :func:`peft_svf.tasks.evaluate`).
    """

    name: str
    domain: str
    loader: Callable[..., Dataset]
    reward: RewardFunc
    description: str = ""
    max_new_tokens: int = 512
    splits: tuple[str, ...] = SPLITS
    tags: tuple[str, ...] = field(default=())

    def load(self, split: str = "train", **kwargs: Any) -> Dataset:
        """The split as a ``datasets.Dataset``; extra keyword arguments go to the loader (e.g. ``data_files``)."""
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; it has {self.splits}")
        return self.loader(split, **kwargs)


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add a task to the registry (refusing to replace one silently) and return it."""
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"a task named {task.name!r} is registered already; pass overwrite=True to replace it")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}") from None


def list_tasks(domain: str | None = None, tag: str | None = None) -> list[str]:
    """Names of the registered tasks, sorted, optionally only one domain's or those with a tag."""
    return sorted(
        name
        for name, task in _REGISTRY.items()
        if (domain is None or task.domain == domain) and (tag is None or tag in task.tags)
    )


def train_valid_split(train: Dataset, split: str) -> Dataset:
    """The authors' split of a training set: even indices train, odd indices validate."""
    if split not in ("train", "valid"):
        raise ValueError(f"train_valid_split takes 'train' or 'valid', not {split!r}")
    start = 0 if split == "train" else 1
    return train.select(range(start, len(train), 2))


def chat_prompt(user: str, system: str | None = None) -> list[dict[str, str]]:
    """A conversational prompt as TRL expects it: a list of ``{"role", "content"}`` messages."""
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}]
