"""Strategy C: few-shot adaptation, a cross-entropy-method search over expert mixtures (paper 3.2 C, A.4).

As the authors: population 32, elite ratio 0.2, alpha clamped to [0, 1], the mean starts at the uniform
mixture with std = range / 2, one alpha per expert or per expert and weight matrix, optional
normalisation to sum 1, ties on few-shot accuracy broken by the mean token log-likelihood of the member's
own correct answers, and the best member carried into the next generation and evaluated again.

Unlike the authors' code, which generates member after member, a whole generation is evaluated at once:
every member becomes a temporary adapter and one greedy ``generate`` runs all (member x example) rows
with per-row adapters (see ``benchmarks/two_pass_overhead.py`` for the speed-up).

The settings live in one :class:`CEMConfig` (PEFT/TRL's config-object shape), shared by :func:`cem_adapt`,
``SelfAdaptiveModel.adapt`` and ``peft-svf adapt``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm
from transformers.utils import logging

from ..prompts import render
from ..tasks.rewards import checked_reward_call, stop_condition
from .generation import greedy_texts
from .mixing import Alpha, layer_names, mix_svf_adapters, temporary_mixtures

if TYPE_CHECKING:
    from .model import SelfAdaptiveModel

logger = logging.get_logger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class CEMConfig:
    """Settings of the cross-entropy-method search over expert mixtures; the defaults are the authors'."""

    population_size: int = field(default=32, metadata={"help": "Mixtures evaluated per generation."})
    elite_ratio: float = field(
        default=0.2, metadata={"help": "Share of the population whose mean and std the next generation samples from."}
    )
    generations: int = field(default=10, metadata={"help": "CEM generations."})
    per_layer: bool = field(
        default=False, metadata={"help": "One weight per expert and SVF layer instead of one per expert."}
    )
    normalize: bool = field(default=False, metadata={"help": "Make each mixture's weights sum to 1."})
    adapter_name: str = field(default="few_shot", metadata={"help": "Name of the adapter holding the result."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling."})
    max_new_tokens: int = field(
        default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "Completion budget while scoring a member."}
    )
    batch_size: int | None = field(
        default=None,
        metadata={"help": "Rows per generate call while scoring (default: the whole generation, population x examples)."},
    )
    per_row_rank: int | float | None = field(
        default=None,
        metadata={
            "help": "Score each member with its exact change (None) or its best low-rank change: an int rank, "
            "or a float share of the change's energy (faster, approximate; see SelfAdaptiveModel)."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar over generations."})

    def __post_init__(self) -> None:
        if self.population_size < 2:
            raise ValueError(f"population_size must be at least 2, got {self.population_size}")
        if not 0 < self.elite_ratio <= 1:
            raise ValueError(f"elite_ratio must be in (0, 1], got {self.elite_ratio}")
        if self.generations < 1:
            raise ValueError(f"generations must be at least 1, got {self.generations}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be None or at least 1, got {self.batch_size}")
        rank = self.per_row_rank
        if rank is not None and (
            isinstance(rank, bool)
            or not isinstance(rank, (int, float))
            or (isinstance(rank, int) and rank < 1)
            or (isinstance(rank, float) and not 0 < rank <= 1)
        ):
            raise ValueError(f"per_row_rank must be None, an int >= 1 or a float in (0, 1], got {rank!r}")


def resolve_cem_config(config: CEMConfig | None, legacy: dict[str, Any], stacklevel: int = 3) -> CEMConfig:
    """``config``, with the first release's keyword arguments (``population_size=...``) applied over it.

    Those still work, with a ``FutureWarning``, until the next release.
    """
    config = config or CEMConfig()
    if legacy.get("max_new_tokens", 0) is None:  # the first release's "task default"
        legacy = {k: v for k, v in legacy.items() if k != "max_new_tokens"}
    if not legacy:
        return config
    names = {f.name for f in dataclasses.fields(CEMConfig)}
    unknown = sorted(set(legacy) - names)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; CEM's settings are the fields of CEMConfig")
    warnings.warn(
        f"CEM settings as keyword arguments ({', '.join(sorted(legacy))}) are deprecated and will be removed "
        "in the next release; pass config=CEMConfig(...) instead.",
        FutureWarning,
        stacklevel=stacklevel,
    )
    return dataclasses.replace(config, **legacy)


@dataclass
class CEMResult:
    """The mixture CEM found: ``alpha`` (``{expert: a}``, or ``{expert: {module: a}}`` per layer), its few-shot
    accuracy ``score`` and tie-break ``log_likelihood``, per-generation ``history``, and the adapter holding it."""

    alpha: dict[str, Any]
    score: float
    history: list[dict[str, Any]]
    adapter_name: str
    log_likelihood: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MemberScore:
    """One population member on the few-shot set."""

    accuracy: float
    log_likelihood: float | None  # mean token log-likelihood of its correct answers; None without any
    correct: list[bool] = field(repr=False)

    @property
    def rank_key(self) -> tuple[float, float]:
        return self.accuracy, -math.inf if self.log_likelihood is None else self.log_likelihood


def _as_dataset(data: Dataset | Sequence[Mapping[str, Any]]) -> Dataset:
    dataset = data if isinstance(data, Dataset) else Dataset.from_list([dict(row) for row in data])
    if "prompt" not in dataset.column_names or len(dataset) == 0:
        raise ValueError("the few-shot set needs at least one row and a 'prompt' column")
    return dataset


def _correct(
    reward_funcs: Sequence[Callable], data: Dataset, completions: list[str], repeat: int
) -> list[bool]:
    prompts = list(data["prompt"]) * repeat
    columns = {c: list(data[c]) * repeat for c in data.column_names if c != "prompt"}
    totals = np.zeros(len(completions))
    for func in reward_funcs:
        totals += np.asarray(checked_reward_call(func, completions, prompts=prompts, **columns))
    return [bool(t > 0) for t in totals]


def evaluate_population(
    adaptive_model: SelfAdaptiveModel,
    alphas: Sequence[Alpha],
    data: Dataset | Sequence[Mapping[str, Any]],
    reward_funcs: Callable | Sequence[Callable],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batched: bool = True,
    batch_size: int | None = None,
    per_row_rank: int | float | None = None,
) -> list[MemberScore]:
    """Few-shot accuracy and tie-break log-likelihood of each mixture in ``alphas``.

    ``batched`` runs every (member x example) row in one greedy ``generate`` with per-row adapters
    (``batch_size`` rows at a time if given); otherwise member after member, each at its own
    single-mixture speed (the authors' way, kept to measure and check the batched one against).
    ``per_row_rank`` (batched only): each member's exact change (None) or its best low-rank change.
    """
    data = _as_dataset(data)
    funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    texts = [render(adaptive_model.tokenizer, p) for p in data["prompt"]]
    names = [f"__cem_{i}" for i in range(len(alphas))]
    rows = [name for name in names for _ in texts]
    stop_when = stop_condition(funcs)  # a completion past it scores the same
    with temporary_mixtures(adaptive_model.model, dict(zip(names, alphas, strict=True))):
        if batched:
            outs = [greedy_texts(adaptive_model.model, adaptive_model.tokenizer, texts * len(names), rows,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, per_row_rank=per_row_rank,
                                 stop_when=stop_when, log_likelihoods=True)]  # fmt: skip
        else:
            outs = [greedy_texts(adaptive_model.model, adaptive_model.tokenizer, texts, [name] * len(texts),
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, merge=adaptive_model.merge,
                                 stop_when=stop_when, log_likelihoods=True) for name in names]  # fmt: skip
    completions = [c for out in outs for c in out.completions]
    lengths = [len(g) for out in outs for g in out.generated]
    log_likelihoods = [ll for out in outs for ll in out.log_likelihoods]
    correct = _correct(funcs, data, completions, len(names))
    totals = {name: [0.0, 0] for name in names}
    for i in (i for i, ok in enumerate(correct) if ok):
        totals[rows[i]][0] += log_likelihoods[i]
        totals[rows[i]][1] += lengths[i]
    n = len(texts)
    return [
        MemberScore(
            accuracy=sum(correct[m * n : (m + 1) * n]) / n,
            log_likelihood=totals[name][0] / totals[name][1] if totals[name][1] else None,
            correct=correct[m * n : (m + 1) * n],
        )
        for m, name in enumerate(names)
    ]


def _to_alpha(vector: np.ndarray, experts: list[str], modules: list[str] | None) -> dict[str, Any]:
    if modules is None:
        return {e: float(vector[k, 0]) for k, e in enumerate(experts)}
    return {e: {m: float(vector[k, j]) for j, m in enumerate(modules)} for k, e in enumerate(experts)}


def _summary(values: np.ndarray, experts: list[str]) -> dict[str, float]:
    """One number per expert (the mean over layers for per-layer alphas), for the history."""
    return {e: round(float(values[k].mean()), 6) for k, e in enumerate(experts)}


def cem_adapt(
    adaptive_model: SelfAdaptiveModel,
    few_shot_dataset: Dataset | Sequence[Mapping[str, Any]],
    reward_funcs: Callable | Sequence[Callable],
    config: CEMConfig | None = None,
    **legacy_settings: Any,
) -> CEMResult:
    """Search alpha with CEM on ``few_shot_dataset`` (``prompt`` column plus the rewards' columns).

    A completion is correct when the summed rewards are positive. The best mixture is added to
    ``adaptive_model.model`` as ``config.adapter_name``. ``legacy_settings`` are the first release's keyword
    arguments (``population_size=...``), accepted with a ``FutureWarning``.
    """
    config = resolve_cem_config(config, legacy_settings)
    population_size, generations, adapter_name = config.population_size, config.generations, config.adapter_name
    if adapter_name in adaptive_model.model.peft_config:
        raise ValueError(f"an adapter named {adapter_name!r} exists already; pick another adapter_name")
    data = _as_dataset(few_shot_dataset)
    experts = list(adaptive_model.experts)
    modules = layer_names(adaptive_model.model) if config.per_layer else None
    shape = (len(experts), len(modules) if modules else 1)
    rng = np.random.default_rng(config.seed)
    mean, std = np.full(shape, 1.0 / len(experts)), np.full(shape, 0.5)  # uniform mixture; range / 2
    n_elite = max(1, round(population_size * config.elite_ratio))
    best: tuple[np.ndarray, MemberScore] | None = None
    history: list[dict[str, Any]] = []
    for generation in tqdm(range(generations), desc="CEM", disable=not config.progress):
        samples = np.clip(mean + std * rng.standard_normal((population_size, *shape)), 0.0, 1.0)
        if config.normalize:
            sums = samples.sum(axis=1, keepdims=True)
            samples = np.where(sums > 0, samples / np.where(sums > 0, sums, 1), 1.0 / len(experts))
        if best is not None:
            samples[0] = best[0]  # the incumbent is evaluated again with the new members
        scores = evaluate_population(adaptive_model, [_to_alpha(s, experts, modules) for s in samples], data, reward_funcs,
                                     max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                     per_row_rank=config.per_row_rank)  # fmt: skip
        order = sorted(range(population_size), key=lambda i: scores[i].rank_key, reverse=True)
        elites = samples[order[:n_elite]]
        mean, std = elites.mean(axis=0), elites.std(axis=0)
        best = (samples[order[0]].copy(), scores[order[0]])
        accuracies = [s.accuracy for s in scores]
        history.append({
            "generation": generation,
            "best_accuracy": best[1].accuracy,
            "best_log_likelihood": best[1].log_likelihood,
            "mean_accuracy": float(np.mean(accuracies)),
            "elite_accuracy": float(np.mean([accuracies[i] for i in order[:n_elite]])),
            "best_alpha": _summary(best[0], experts),
            "mean": _summary(mean, experts),
            "std": _summary(std, experts),
        })  # fmt: skip
        logger.info(
            "CEM generation %d/%d: best accuracy %.3f, mean %.3f, alpha %s",
            generation + 1, generations, best[1].accuracy, history[-1]["mean_accuracy"], history[-1]["best_alpha"],
        )  # fmt: skip
    assert best is not None
    alpha = _to_alpha(best[0], experts, modules)
    mix_svf_adapters(adaptive_model.model, alpha, adapter_name)
    return CEMResult(alpha=alpha, score=best[1].accuracy, history=history, adapter_name=adapter_name,
                     log_likelihood=best[1].log_likelihood)  # fmt: skip
