"""Self-adaptive two-pass inference (Transformer² section 3.2): dispatchers, expert mixing and few-shot CEM.

    >>> from peft_svf.adaptive import SelfAdaptiveModel
    >>> adaptive_model = SelfAdaptiveModel.from_pretrained(base, experts={"math": "experts/math", "code": "experts/code"})
    >>> adaptive_model.generate(prompts=[[{"role": "user", "content": "What is 7 * 8?"}]], max_new_tokens=32)

See docs/adaptive.md.

``train_classification_expert`` loads on first use: it trains, so it needs TRL and the ``Trainer``, which
inference does not.
"""

from typing import Any

from .cem import CEMConfig, CEMResult, MemberScore, evaluate_population
from .dispatch import (
    CLASSIFIER_ADAPTER,
    ClassifierDispatcher,
    DispatchDecision,
    Dispatcher,
    FixedMixture,
    PromptDispatcher,
    SoftPromptDispatcher,
    dispatch_confusion,
)
from .mixing import BASE, mix_svf_adapters, temporary_mixtures
from .model import SelfAdaptiveModel

__all__ = [
    "BASE",
    "CLASSIFIER_ADAPTER",
    "CEMConfig",
    "CEMResult",
    "ClassifierDispatcher",
    "DispatchDecision",
    "Dispatcher",
    "FixedMixture",
    "MemberScore",
    "PromptDispatcher",
    "SelfAdaptiveModel",
    "SoftPromptDispatcher",
    "dispatch_confusion",
    "evaluate_population",
    "mix_svf_adapters",
    "temporary_mixtures",
    "train_classification_expert",
]


def __getattr__(name: str) -> Any:
    if name == "train_classification_expert":
        from .classifier import train_classification_expert

        return train_classification_expert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
