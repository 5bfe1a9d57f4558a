"""The main job: the whole Transformer² loop on one base model and the offline task suite.

Train (or reuse) the domain experts and the classification expert, then score the base model, each expert
and each adaptation strategy on the unseen tasks, and write the report (Table 2, Figures 4, 6, 7).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

from ..paths import RESULTS_FILE, as_stored
from ..tasks import get_task
from .aggregate import aggregate_seeds
from .config import PipelineConfig
from .experts import ModelLoader, classification_expert, domain_experts
from .report import (
    confusion,
    experts_markdown,
    experts_seeds_markdown,
    summed_confusion,
    table2_markdown,
    table2_seeds_markdown,
    with_best_single_expert,
    write_report,
    write_seeds_report,
)
from .strategies import CLASSIFIER, PROMPT, SOFT, evaluate_unseen

logger = logging.getLogger("peft_svf.pipeline")


def model_loader(model: str | None) -> ModelLoader:
    """A fresh base model and its tokenizer on each call (each expert trains on its own copy)."""
    from ..embedded import load_model_or_embedded

    return lambda: load_model_or_embedded(model)


def self_adaptive_models(
    experts: dict[str, Any], classifier: dict[str, Any], load_model: ModelLoader
) -> dict[str, Any]:
    """One PeftModel holding every expert and z_c, seen through one SelfAdaptiveModel per dispatcher."""
    from ..adaptive import SelfAdaptiveModel

    base, tokenizer = load_model()
    prompt = SelfAdaptiveModel.from_pretrained(
        base, experts={d: r["path"] for d, r in experts.items()}, dispatcher="prompt", tokenizer=tokenizer,
        classifier=classifier["path"],
    )  # fmt: skip
    names = list(experts)
    return {
        PROMPT: prompt,
        CLASSIFIER: SelfAdaptiveModel(prompt.model, tokenizer, experts=names, dispatcher="classifier"),
        SOFT: SelfAdaptiveModel(prompt.model, tokenizer, experts=names, dispatcher="soft"),
    }


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Runs every stage and writes the report under ``config.output_dir / "report"``; returns the summary."""
    start = time.time()
    load_model = model_loader(config.model)
    experts = domain_experts(config, load_model)
    trained = time.time()
    classifier = classification_expert(config, load_model)
    classified = time.time()
    adaptive_models = self_adaptive_models(experts, classifier, load_model)
    unseen = with_best_single_expert(
        evaluate_unseen(config, adaptive_models, adaptive_models[PROMPT].tokenizer)
    )
    domains = {name: get_task(name).domain for name in config.unseen_tasks}
    summary = {
        "config": config.to_dict(),
        "experts": experts,
        "classifier": classifier,
        "unseen": unseen,
        "confusion": {m: confusion(unseen, m, domains) for m in (PROMPT, CLASSIFIER, SOFT)},
        "seconds": {
            "experts": round(trained - start, 1),
            "classifier": round(classified - trained, 1),
            "unseen": round(time.time() - classified, 1),
            "total": round(time.time() - start, 1),
        },
    }
    files = write_report(config.output_dir / "report", summary)
    print(f"\nExperts on their own tasks (test accuracy %):\n{experts_markdown(experts)}")
    print(f"\nUnseen tasks, accuracy % (normalised score):\n{table2_markdown(unseen)}")
    print(f"\nTotal {summary['seconds']['total'] / 60:.1f} min. Report: " + ", ".join(str(f) for f in files))
    return summary


def seed_config(config: PipelineConfig, seed: int) -> PipelineConfig:
    """One seed's job of a multi-seed run: its own folder, so its experts are reused there on a rerun."""
    return replace(config, seed=seed, seeds=(), output_dir=config.output_dir / f"seed-{seed}")


def finished_seed(config: PipelineConfig) -> dict[str, Any] | None:
    """The summary of this seed's job if it already ran to its end with the same settings, else None.

    A seed of the full job takes most of an hour: a multi-seed run stopped after some seeds resumes at the
    first unfinished one. The job writes its results.json last, so the file's presence means it finished.
    """
    path = config.output_dir / "report" / RESULTS_FILE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    settings = {k: v for k, v in as_stored(config.to_dict()).items() if k != "output_dir"}
    stored = {k: v for k, v in summary.get("config", {}).items() if k != "output_dir"}
    if stored != settings:
        logger.warning("%s was run with other settings; running seed %d again", path, config.seed)
        return None
    return summary


def run_seeds(config: PipelineConfig) -> dict[str, Any]:
    """:func:`run_pipeline` once per seed of ``config.seeds`` (into ``output_dir/seed-<s>/``; a seed that
    finished there with the same settings is read back, not run again), then the statistics over seeds
    (:func:`~peft_svf.pipeline.aggregate.aggregate_seeds`) written to ``output_dir/report/``; returns what
    results.json holds."""
    if not config.seeds:
        raise ValueError("run_seeds needs config.seeds; a single seed is run_pipeline(config)")
    start = time.time()
    summaries = {}
    for seed in config.seeds:
        one = seed_config(config, seed)
        summaries[seed] = finished_seed(one)
        if summaries[seed] is None:
            logger.info("seed %d of %s", seed, list(config.seeds))
            summaries[seed] = run_pipeline(one)
        else:
            logger.info(
                "seed %d of %s finished earlier in %s; reusing it", seed, list(config.seeds), one.output_dir
            )
    results = aggregate_seeds(summaries)
    job = config.to_dict()
    del job["seed"]  # each seed's own config is in its seed-<s>/report/results.json
    results.update(
        config=job,
        confusion=summed_confusion(summaries),
        per_seed={str(s): {"report": str(seed_config(config, s).output_dir / "report"),
                           "seconds": summary.get("seconds")} for s, summary in summaries.items()},
        seconds={"total": round(time.time() - start, 1)},
    )  # fmt: skip
    files = write_seeds_report(config.output_dir / "report", results, summaries)
    print(f"\nExperts on their own tasks over {len(summaries)} seeds (test accuracy %, mean ± sd [95% CI]):\n"
          f"{experts_seeds_markdown(results)}")  # fmt: skip
    print(f"\nUnseen tasks over seeds {list(config.seeds)}, accuracy % mean ± sd [95% CI]:\n"
          f"{table2_seeds_markdown(results)}")  # fmt: skip
    print(f"\nTotal {results['seconds']['total'] / 60:.1f} min. Report: " + ", ".join(str(f) for f in files))
    return results
