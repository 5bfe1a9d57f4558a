"""The main job: the whole Transformer² loop on one base model and the offline task suite.

Train (or reuse) the domain experts and the classification expert, then score the base model, each expert
and each adaptation strategy on the unseen tasks, and write the report (Table 2, Figures 4, 6, 7).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..tasks import get_task
from .config import PipelineConfig
from .experts import ModelLoader, classification_expert, domain_experts
from .report import confusion, experts_markdown, table2_markdown, with_best_single_expert, write_report
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
