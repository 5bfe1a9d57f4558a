"""Stage 1 of the main job: the domain experts and the classification expert, trained once and reused."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..paths import EXPERT_DIR, RESULTS_FILE, as_stored, write_json
from ..tasks import stop_condition
from ..tasks.classification import TASK_IDENTIFICATION
from ..trainer.recipe import recipe_beta, recipe_bf16, recipe_candidates, recipe_learning_rate, train_expert
from .config import PipelineConfig

logger = logging.getLogger(__name__)

ModelLoader = Callable[[], tuple[Any, Any]]
CLASSIFIER_DIR = "classifier"  # the classification expert's folder under experts/


def _reusable_results(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The results of an expert stored in ``folder`` if it was trained with ``settings``, else None."""
    results_file, adapter = folder / RESULTS_FILE, folder / EXPERT_DIR / "adapter_config.json"
    if not (results_file.exists() and adapter.exists()):
        return None
    results = json.loads(results_file.read_text())
    if results.get("pipeline_settings") != as_stored(settings):
        logger.warning("%s was trained with other settings; training it again", folder)
        return None
    return results


def _remember(folder: Path, results: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    results["pipeline_settings"] = settings
    write_json(folder / RESULTS_FILE, results)
    return results


def domain_experts(config: PipelineConfig, load_model: ModelLoader) -> dict[str, dict[str, Any]]:
    """Train (or reuse) one SVF expert per domain; each starts from a fresh copy of the base model."""
    all_results = {}
    beta = recipe_beta("svf", config.expert_beta)  # the kind's, the same for every task
    for domain, task_name in config.expert_tasks.items():
        folder = config.output_dir / "experts" / domain
        lr = recipe_learning_rate("svf", task_name, config.expert_lr)
        candidates = recipe_candidates("svf", task_name, config.expert_candidates, steps=config.expert_steps,
                                       eval_steps=config.expert_eval_steps)  # fmt: skip
        task = config.task(task_name)
        stops_at_answer = stop_condition(task.reward) is not None
        bf16 = recipe_bf16("svf", task_name, config.bf16)
        settings = config.expert_settings(lr, beta, candidates, stops_at_answer, bf16)
        results = _reusable_results(folder, settings)
        if results is None:
            logger.info("training the %s expert on %s", domain, task_name)
            model, tokenizer = load_model()
            results = train_expert(
                model, tokenizer, task, folder, steps=config.expert_steps,
                batch=config.expert_batch, lr=lr, beta=beta, temperature=config.expert_temperature,
                candidates=candidates,
                eval_steps=config.expert_eval_steps, valid_n=config.expert_valid_n,
                test_n=config.expert_test_n, seed=config.seed, bf16=bf16,
            )  # fmt: skip
            results = _remember(folder, results, settings)
        else:
            logger.info("reusing the %s expert in %s", domain, folder)
        results["path"] = str(folder / EXPERT_DIR)
        all_results[domain] = results
    return all_results


def classification_expert(config: PipelineConfig, load_model: ModelLoader) -> dict[str, Any]:
    """Train (or reuse) z_c, the expert that names a question's domain (strategy B)."""
    from ..adaptive import train_classification_expert

    candidates = recipe_candidates("svf", TASK_IDENTIFICATION, steps=config.classifier_steps,
                                   eval_steps=config.classifier_eval_steps)  # fmt: skip
    settings = config.classifier_settings(candidates)
    folder = config.output_dir / "experts" / CLASSIFIER_DIR
    results = _reusable_results(folder, settings)
    if results is None:
        logger.info("training the classification expert")
        model, tokenizer = load_model()
        results = train_classification_expert(
            model, tokenizer, tasks=config.expert_tasks, output_dir=folder, steps=config.classifier_steps,
            batch=config.classifier_batch, temperature=config.classifier_temperature,
            eval_steps=config.classifier_eval_steps, valid_n=config.classifier_valid_n, seed=config.seed,
            candidates=candidates, bf16=bool(config.bf16),
        )  # fmt: skip
        results = _remember(folder, results, settings)
    results["path"] = str(folder / EXPERT_DIR)
    return results
