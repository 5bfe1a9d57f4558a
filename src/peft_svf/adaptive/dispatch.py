"""Pass 1: deciding, per prompt, which expert (or mixture, or the base weights) answers it.

Strategies (paper section 3.2): A) :class:`PromptDispatcher` asks the base model the Figure 3 question;
B) :class:`ClassifierDispatcher` asks the same with the classification expert ``z_c`` active; beyond the
paper, :class:`SoftPromptDispatcher` reads the label probabilities from one forward pass and mixes the
experts by them; :class:`FixedMixture` gives every prompt one mixture (how a CEM result is used, C).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..prompts import Prompt, question_of, render
from ..tasks.classification import ASSISTANT_PREFIX, OTHERS, classification_prompt, parse_task_label
from ..tasks.extract import first_box_closed
from ..tokens import ensure_pad_token
from .generation import greedy_texts, last_token_logits, single_adapter
from .mixing import BASE, Alpha

if TYPE_CHECKING:
    from .model import SelfAdaptiveModel

CLASSIFIER_ADAPTER = "task_classifier"

Template = Callable[[str, list[str], Mapping[str, str] | None], Any]


@dataclass
class DispatchDecision:
    """What pass 1 decided for one prompt.

    ``label``: the category named (``"others"`` for the base weights or an unparsable answer; None for a
    fixed mixture). ``alpha``: weight of each expert (all zero: base weights). ``base``: weight of the
    base (identity) vector in the mixture, used by soft dispatch. ``adapter``: an existing adapter to use
    as it is (a saved CEM mixture). ``text``: pass 1's answer. ``probabilities``: soft dispatch's label
    probabilities, "others" included.
    """

    label: str | None
    alpha: dict[str, Any]
    text: str = ""
    base: float = 0.0
    adapter: str | None = None
    probabilities: dict[str, float] | None = None

    def mixture(self) -> dict[str, Any]:
        """``alpha`` with the base weight under ``"__base__"`` (the form :func:`mix_svf_adapters` takes)."""
        return {**self.alpha, BASE: self.base} if self.base else dict(self.alpha)

    def route(self) -> tuple[str, dict[str, Any] | None]:
        """(adapter to use as it is, or None; mixture to build otherwise)."""
        if self.adapter is not None:
            return self.adapter, None
        mixture = {k: v for k, v in self.mixture().items() if isinstance(v, Mapping) or v != 0.0}
        experts = [k for k in mixture if k != BASE]
        if not experts:
            return BASE, None
        if len(mixture) == 1 and mixture[experts[0]] == 1.0:
            return experts[0], None
        return None, mixture

    def key(self) -> str:
        """Identical mixtures share one temporary adapter."""
        return json.dumps(self.mixture(), sort_keys=True)


class Dispatcher:
    """Base class: ``dispatch(prompts)`` once bound to a :class:`SelfAdaptiveModel` (which binds it)."""

    adaptive_model: SelfAdaptiveModel | None = None

    def bind(self, adaptive_model: SelfAdaptiveModel) -> Dispatcher:
        self.adaptive_model = adaptive_model
        return self

    def _bound(self) -> SelfAdaptiveModel:
        if self.adaptive_model is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a SelfAdaptiveModel yet")
        return self.adaptive_model

    def dispatch(self, prompts: Sequence[Prompt]) -> list[DispatchDecision]:
        raise NotImplementedError


def _one_hot(experts: list[str], label: str | None) -> dict[str, float]:
    return {expert: 1.0 if expert == label else 0.0 for expert in experts}


class PromptDispatcher(Dispatcher):
    """Strategy A: greedy pass 1 on the classification prompt with the base weights, label from ``\\boxed{}``.

    ``adapter_name`` runs pass 1 with that adapter instead (strategy B). ``assistant_prefix`` starts the
    answer for the model (e.g. ``"Classification: \\\\boxed{"``), which helps small models stay on format.
    Anything not naming an expert, "others" included, means the base weights.
    """

    def __init__(
        self,
        descriptions: Mapping[str, str] | None = None,
        *,
        max_new_tokens: int = 32,
        batch_size: int | None = 32,
        template: Template = classification_prompt,
        assistant_prefix: str = "",
        adapter_name: str | None = None,
    ) -> None:
        self.descriptions = descriptions
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.template = template
        self.assistant_prefix = assistant_prefix
        self.adapter_name = adapter_name

    def pass_one_texts(self, prompts: Sequence[Prompt]) -> list[str]:
        adaptive_model = self._bound()
        descriptions = self.descriptions if self.descriptions is not None else adaptive_model.descriptions
        return [
            render(
                adaptive_model.tokenizer,
                self.template(question_of(p), list(adaptive_model.experts), descriptions),
            )
            + self.assistant_prefix
            for p in prompts
        ]

    def _answered(self, completion: str) -> bool:
        """Stop a row once its first ``\\boxed{...}`` has closed: that is all pass 1 reads."""
        return first_box_closed(self.assistant_prefix + completion)

    def dispatch(self, prompts: Sequence[Prompt]) -> list[DispatchDecision]:
        adaptive_model = self._bound()
        if not prompts:
            return []
        texts = self.pass_one_texts(prompts)
        rows = [self.adapter_name or BASE] * len(texts)
        answers = greedy_texts(
            adaptive_model.model, adaptive_model.tokenizer, texts, rows, max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, share_prefix=True, stop_when=self._answered).completions  # fmt: skip
        decisions = []
        for answer in answers:
            text = self.assistant_prefix + answer
            label = parse_task_label(text, list(adaptive_model.experts), fallback=OTHERS)
            base = 0.0 if label in adaptive_model.experts else 1.0
            decisions.append(
                DispatchDecision(label, _one_hot(list(adaptive_model.experts), label), text, base=base)
            )
        return decisions


class ClassifierDispatcher(PromptDispatcher):
    """Strategy B: the prompt dispatcher with the classification expert ``z_c`` active in pass 1.

    Its answer starts prefilled with ``ASSISTANT_PREFIX``, as :func:`~peft_svf.adaptive.train_classification_expert`
    trains ``z_c`` (pass ``assistant_prefix=""`` for a ``z_c`` trained before 2026-12-08, which wrote it itself).
    """

    def __init__(self, adapter_name: str = CLASSIFIER_ADAPTER, **kwargs: Any) -> None:
        kwargs.setdefault("assistant_prefix", ASSISTANT_PREFIX)
        super().__init__(adapter_name=adapter_name, **kwargs)

    def bind(self, adaptive_model: SelfAdaptiveModel) -> Dispatcher:
        if self.adapter_name not in adaptive_model.model.peft_config:
            raise ValueError(
                f"the classifier dispatcher needs the classification expert loaded as adapter {self.adapter_name!r} "
                "(SelfAdaptiveModel.from_pretrained(..., classifier=dir), or model.load_adapter(dir, adapter_name=...))"
            )
        return super().bind(adaptive_model)


def label_first_tokens(tokenizer: Any, prefix: str, labels: Sequence[str]) -> dict[str, int]:
    """The token each label starts with right after ``prefix``; labels must start with distinct tokens."""
    start = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    tokens = {}
    for label in labels:
        ids = tokenizer(prefix + label, add_special_tokens=False)["input_ids"]
        if ids[: len(start)] != start or len(ids) == len(start):
            raise ValueError(f"the tokenizer merges {label!r} into the prefix {prefix!r}; use another prefix")
        tokens[label] = ids[len(start)]
    if len(set(tokens.values())) < len(tokens):
        raise ValueError(
            f"labels {list(labels)} do not start with distinct tokens; soft dispatch cannot tell them apart"
        )
    return tokens


class SoftPromptDispatcher(PromptDispatcher):
    """Beyond the paper: one forward pass reads ``P(label | prompt, "Classification: \\\\boxed{")``.

    The probabilities of each label's first token (experts and "others") are renormalised over those
    labels; expert ``k`` gets ``alpha_k = p_k`` and the base (identity) vector gets ``p_others``, so a
    confident answer is that expert and an unsure one leans toward the base weights. No decoding, so
    pass 1 costs one prefill.
    """

    def __init__(self, descriptions: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("assistant_prefix", ASSISTANT_PREFIX)
        super().__init__(descriptions, **kwargs)

    @torch.inference_mode()
    def dispatch(self, prompts: Sequence[Prompt]) -> list[DispatchDecision]:
        adaptive_model = self._bound()
        if not prompts:
            return []
        experts = list(adaptive_model.experts)
        labels = [*experts, OTHERS]
        token_ids = list(label_first_tokens(adaptive_model.tokenizer, self.assistant_prefix, labels).values())
        pad = ensure_pad_token(adaptive_model.tokenizer)
        rows = [
            adaptive_model.tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in self.pass_one_texts(prompts)
        ]
        with single_adapter(adaptive_model.model, self.adapter_name or BASE, merge=False):
            logits = last_token_logits(adaptive_model.model, rows, pad, self.batch_size)
        probabilities = torch.softmax(logits, dim=-1)[:, token_ids].cpu()
        decisions = []
        for row in probabilities.double():
            p = row / row.sum()
            probs = dict(zip(labels, p.tolist(), strict=True))
            label = labels[int(p.argmax())]
            decisions.append(DispatchDecision(label, {e: probs[e] for e in experts}, text=label,
                                              base=probs[OTHERS], probabilities=probs))  # fmt: skip
        return decisions


class FixedMixture(Dispatcher):
    """Every prompt gets the same mixture: ``alpha`` (per expert or per layer) or an existing adapter's name."""

    def __init__(self, alpha_or_adapter: Alpha | str) -> None:
        self.alpha_or_adapter = alpha_or_adapter

    def dispatch(self, prompts: Sequence[Prompt]) -> list[DispatchDecision]:
        adaptive_model = self._bound()
        if isinstance(self.alpha_or_adapter, str):
            if self.alpha_or_adapter not in adaptive_model.model.peft_config:
                raise ValueError(f"no adapter named {self.alpha_or_adapter!r} in the model")
            return [DispatchDecision(None, {}, adapter=self.alpha_or_adapter) for _ in prompts]
        alpha = dict(self.alpha_or_adapter)
        return [DispatchDecision(None, alpha) for _ in prompts]


def dispatch_confusion(
    model_or_dispatcher: SelfAdaptiveModel | Dispatcher, labelled_prompts: Mapping[str, Sequence[Prompt]]
) -> dict[str, Any]:
    """Paper Figure 6: rows are true labels, columns predicted labels ("others" last), as counts and row fractions.

    ``labelled_prompts`` maps a true label to its prompts. The matrix is square (a label only ever
    predicted gets an empty row); the layout is :func:`confusion_matrix`'s. JSON-serialisable.
    """
    predicted: dict[str, Counter[str]] = {}
    for true_label, prompts in labelled_prompts.items():
        decisions = model_or_dispatcher.dispatch(list(prompts))
        predicted[true_label] = Counter(d.label if d.label is not None else OTHERS for d in decisions)
    labels = [label for label in labelled_prompts if label != OTHERS]
    for guesses in predicted.values():
        labels += [g for g in guesses if g not in labels and g != OTHERS]
    labels.append(OTHERS)
    return confusion_matrix({label: predicted.get(label, Counter()) for label in labels}, labels)


def confusion_matrix(chosen: Mapping[str, Mapping[str, int]], labels: Sequence[str]) -> dict[str, Any]:
    """Figure 6's layout, ``{"rows", "labels", "matrix", "fractions", "n"}``, from label counts per row.

    ``chosen`` maps a row (a true label, or a task) to how often the dispatcher chose each label for its
    prompts; ``labels`` orders the columns. ``fractions`` are per row (an empty row stays zeros).
    """
    matrix = [[counts.get(label, 0) for label in labels] for counts in chosen.values()]
    fractions = [[count / max(sum(row), 1) for count in row] for row in matrix]
    return {"rows": list(chosen), "labels": list(labels), "matrix": matrix, "fractions": fractions,
            "n": sum(map(sum, matrix))}  # fmt: skip
