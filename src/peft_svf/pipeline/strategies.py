"""Stage 2 of the main job: base, each expert and each adaptation strategy on the unseen tasks (Table 2)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import torch

from ..precision import inference_in
from ..tasks import Task, evaluate, train_valid_split
from ..tasks.classification import OTHERS
from .config import PipelineConfig

logger = logging.getLogger(__name__)

# The methods of Table 2, as they are named in results.json and table2.md. BASE_MODEL is the base model's row;
# peft_svf.adaptive.BASE ("__base__") is another thing, the adapter name meaning "no adapter" in a mixture.
BASE_MODEL = "base"
PROMPT, CLASSIFIER, SOFT, FEW_SHOT = (
    "prompt dispatch",
    "classification expert",
    "soft dispatch",
    "few-shot CEM",
)


class DecisionRecorder:
    """Wraps a SelfAdaptiveModel's ``generate`` to keep every dispatch decision, not only the last batch's."""

    def __init__(self, adaptive_model: Any) -> None:
        self.adaptive_model, self.decisions = adaptive_model, []

    def __enter__(self) -> list:
        original = self.adaptive_model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.decisions.extend(self.adaptive_model.last_decisions)
            return out

        self.adaptive_model.generate = generate
        return self.decisions

    def __exit__(self, *exc: object) -> None:
        del self.adaptive_model.generate  # the instance attribute goes; the class method shows again


def _score(
    model: Any, task: Task, tokenizer: Any, config: PipelineConfig, base_accuracy: float | None
) -> dict[str, Any]:
    start = time.time()
    result = evaluate(model, task, tokenizer, split="test", n=config.unseen_n, batch_size=config.unseen_batch_size,
                      base_accuracy=base_accuracy)  # fmt: skip
    # correct_items: each test item's 0/1 in order, for the multi-seed report's bootstrap (pipeline.aggregate)
    return {"accuracy": result.accuracy, "normalized": result.normalized_score, "n": result.n,
            "seconds": round(time.time() - start, 1),
            "correct_items": [int(r["correct"]) for r in result.records]}  # fmt: skip


def _dispatched(
    adaptive_model: Any, task: Task, tokenizer: Any, config: PipelineConfig, base: float
) -> dict[str, Any]:
    """Score a dispatching strategy and count its labels and mean alpha over the task's prompts."""
    with DecisionRecorder(adaptive_model) as decisions:
        scores = _score(adaptive_model, task, tokenizer, config, base)
    labels = Counter(d.label if d.label is not None else OTHERS for d in decisions)
    experts = list(adaptive_model.experts)
    scores["labels"] = {label: labels.get(label, 0) for label in [*experts, OTHERS]}
    scores["mean_alpha"] = {
        k: sum(d.alpha.get(k, 0.0) for d in decisions) / max(len(decisions), 1) for k in experts
    }
    return scores


def _score_with_adapter(
    adaptive_model: Any, adapter: str, task: Task, tokenizer: Any, config: PipelineConfig, base: float
) -> dict[str, Any]:
    """Score with one adapter on every prompt through ``adaptive_model``: it adds the adapter into the weights
    for the batch (base-model speed, half the time of SVF's factored forward) and puts the exact weights back."""
    adaptive_model.use_mixture(adapter)
    try:
        return _score(adaptive_model, task, tokenizer, config, base)
    finally:
        adaptive_model.use_mixture(None)


def evaluate_unseen(
    config: PipelineConfig, adaptive_models: dict[str, Any], tokenizer: Any
) -> dict[str, dict[str, Any]]:
    """Every method on every unseen task: ``{task: {method: {"accuracy", "normalized", ...}}}``.

    ``adaptive_models`` holds SelfAdaptiveModels sharing one PeftModel, keyed by strategy (PROMPT,
    CLASSIFIER, SOFT). Everything runs in bf16 mixed precision when ``config.unseen_in_bf16()``.
    """
    peft_model = adaptive_models[PROMPT].model  # the one PeftModel every strategy scores through
    with inference_in(peft_model, torch.bfloat16 if config.unseen_in_bf16() else None):
        return {task_name: _unseen_task(config, adaptive_models, task_name, tokenizer)
                for task_name in config.unseen_tasks}  # fmt: skip


def _unseen_task(
    config: PipelineConfig, adaptive_models: dict[str, Any], task_name: str, tokenizer: Any
) -> dict[str, Any]:
    """Every method on one unseen task: ``{method: {"accuracy", "normalized", ...}}``."""
    adaptive_model = adaptive_models[PROMPT]
    peft_model, experts = adaptive_model.model, list(adaptive_model.experts)
    task = config.task(task_name)
    logger.info("unseen task %s (%d items)", task_name, config.unseen_n)
    with peft_model.disable_adapter():
        row = {BASE_MODEL: _score(peft_model, task, tokenizer, config, None)}
    base = row[BASE_MODEL]["accuracy"]
    row[BASE_MODEL]["normalized"] = 1.0 if base else None
    for expert in experts:
        row[f"expert: {expert}"] = _score_with_adapter(adaptive_model, expert, task, tokenizer, config, base)
    for strategy in (PROMPT, CLASSIFIER, SOFT):
        row[strategy] = _dispatched(adaptive_models[strategy], task, tokenizer, config, base)
    row[FEW_SHOT] = few_shot_cem(config, adaptive_model, task, tokenizer, base)
    return row


def few_shot_cem(
    config: PipelineConfig, adaptive_model: Any, task: Task, tokenizer: Any, base: float | None
) -> dict[str, Any]:
    """CEM on ``cem_shots`` training items of the task (none of them a test item), then the mixture on the test.

    The mixture is saved as ``config.output_dir / "adapters" / f"cem_{task.name}"``.
    """
    from ..adaptive import CEMConfig

    tested = set(task.load("test").select(range(config.unseen_n))["question"])
    pool = train_valid_split(task.load("train"), "train").filter(lambda row: row["question"] not in tested)
    shots = pool.select(range(config.cem_shots))  # unseen tasks draw test items from the pool's space too
    start = time.time()
    cem = CEMConfig(population_size=config.cem_population, elite_ratio=config.cem_elite_ratio,
                    generations=config.cem_generations, adapter_name=f"cem_{task.name}", seed=config.seed,
                    max_new_tokens=task.max_new_tokens)  # fmt: skip
    found = adaptive_model.adapt(shots, task.reward, cem)
    search_seconds = round(time.time() - start, 1)
    adaptive_model.model.save_pretrained(
        str(config.output_dir / "adapters"), selected_adapters=[found.adapter_name]
    )
    scores = _score_with_adapter(adaptive_model, found.adapter_name, task, tokenizer, config, base)
    scores.update(alpha=found.alpha, few_shot_score=found.score, search_seconds=search_seconds,
                  history=found.history)  # fmt: skip
    return scores
