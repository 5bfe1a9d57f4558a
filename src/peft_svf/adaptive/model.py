"""``SelfAdaptiveModel``: Transformer²'s two-pass inference over a PEFT model holding SVF experts.

Pass 1 (a dispatcher) decides per prompt which expert, mixture or the base weights should answer; pass 2
generates, all prompts of a batch in one ``generate`` call whatever their experts. It is an ``nn.Module``
around the ``PeftModel`` with a ``generate`` of the same signature, so code written for a model (such as
:func:`peft_svf.tasks.evaluate`) runs two-pass inference unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..prompts import Prompt, questions_from_ids, render
from ..svf.config import SVFConfig
from ..tokens import ensure_pad_token
from .cem import CEMConfig, CEMResult, cem_adapt
from .dispatch import (
    CLASSIFIER_ADAPTER,
    ClassifierDispatcher,
    DispatchDecision,
    Dispatcher,
    FixedMixture,
    PromptDispatcher,
    SoftPromptDispatcher,
)
from .generation import routed_generate
from .mixing import Alpha, temporary_mixtures

DISPATCHERS = {"prompt": PromptDispatcher, "classifier": ClassifierDispatcher, "soft": SoftPromptDispatcher}

DispatcherSpec = str | Dispatcher


class SelfAdaptiveModel(nn.Module):
    """Two-pass self-adaptive inference (Transformer², Sun, Cetin and Tang, ICLR 2025, section 3.2).

    Args:
        model: A ``PeftModel`` holding the SVF experts (and ``z_c`` for the classifier dispatcher).
        tokenizer: Its tokenizer (chat template used for pass 1 and for ``generate(prompts=...)``).
        experts: Adapter names of the experts; they are also the category labels pass 1 chooses from.
        dispatcher: ``"prompt"`` (A), ``"classifier"`` (B), ``"soft"``, or a :class:`Dispatcher`.
        descriptions: Category descriptions for the classification prompt (paper Figure 3 defaults).
        merge: Whether a pass-2 batch whose rows share one adapter runs with the adapter added into the
            dense weights (base-model speed per token; the original weights are put back after the call).
            ``"auto"`` does it when the generation is long enough to repay building the weights.
        per_row_rank: How a pass-2 batch whose rows use different adapters applies each row's change:
            ``None`` exactly (``W x + U ((s' - s) * (V^T x))``); an int keeps each row's ``per_row_rank``
            largest components per layer (its best low-rank change, ``W x + B (A x)``: closer to base
            speed, approximate); a float in (0, 1] keeps the fewest components holding that share of the
            change's energy (the meaning of ``rank`` in PEFT's ``convert_to_lora``).

    The wrapped model is never left changed: active adapter, temporary adapters, weights, training flags
    and ``requires_grad`` are restored after every call, also when it raises.
    """

    def __init__(
        self,
        model: PeftModel,
        tokenizer: Any,
        experts: Sequence[str],
        dispatcher: DispatcherSpec = "prompt",
        descriptions: Mapping[str, str] | None = None,
        merge: bool | str = "auto",
        per_row_rank: int | float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, PeftModel):
            raise TypeError(
                "SelfAdaptiveModel wraps a PeftModel; use SelfAdaptiveModel.from_pretrained for a base model"
            )
        missing = [e for e in experts if e not in model.peft_config]
        if missing:
            raise ValueError(
                f"experts {missing} are not adapters of the model (it has {list(model.peft_config)})"
            )
        not_svf = [e for e in experts if not isinstance(model.peft_config[e], SVFConfig)]
        if not_svf:
            raise ValueError(f"experts {not_svf} are not SVF adapters")
        self.model = model
        self.training = model.training  # mirror the wrapped model (train()/eval() reach it as a submodule)
        self.tokenizer = tokenizer
        self.experts = list(experts)
        self.descriptions = descriptions
        self.merge = merge
        self.per_row_rank = per_row_rank
        self.last_decisions: list[DispatchDecision] = []
        self._default_dispatcher = self._make_dispatcher(dispatcher)
        self.dispatcher = self._default_dispatcher

    @classmethod
    def from_pretrained(
        cls,
        base_model: str | os.PathLike | PreTrainedModel | PeftModel,
        experts: Mapping[str, str | os.PathLike],
        dispatcher: DispatcherSpec = "prompt",
        descriptions: Mapping[str, str] | None = None,
        tokenizer: Any = None,
        classifier: str | os.PathLike | None = None,
        **from_pretrained_kwargs: Any,
    ) -> SelfAdaptiveModel:
        """Load a base model (id, path or model) and the experts ``{label: adapter dir or Hub id}``.

        ``classifier`` is the classification expert ``z_c``, loaded as adapter ``"task_classifier"``.
        Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained``.
        """
        if not experts:
            raise ValueError("from_pretrained needs at least one expert")
        if isinstance(base_model, (str, os.PathLike)):
            path = os.fspath(base_model)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path)
            base_model = AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(base_model.config._name_or_path)
        items = list(experts.items())
        if isinstance(base_model, PeftModel):
            model = base_model
        else:
            first, source = items.pop(0)
            model = PeftModel.from_pretrained(base_model, os.fspath(source), adapter_name=first)
        for name, source in items:
            model.load_adapter(os.fspath(source), adapter_name=name)
        if classifier is not None:
            model.load_adapter(os.fspath(classifier), adapter_name=CLASSIFIER_ADAPTER)
        model.eval()
        return cls(model, tokenizer, list(experts), dispatcher=dispatcher, descriptions=descriptions)

    def _make_dispatcher(self, dispatcher: DispatcherSpec) -> Dispatcher:
        if isinstance(dispatcher, str):
            if dispatcher not in DISPATCHERS:
                raise ValueError(
                    f"unknown dispatcher {dispatcher!r}; use one of {list(DISPATCHERS)} or an object"
                )
            dispatcher = DISPATCHERS[dispatcher]()
        return dispatcher.bind(self)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def use_mixture(self, alpha_or_adapter: Alpha | str | None) -> None:
        """Give every prompt one mixture (``{expert: alpha}``, per-layer alpha, or an adapter name, e.g. a
        CEM result); ``None`` goes back to the dispatcher the model was built with."""
        if alpha_or_adapter is None:
            self.dispatcher = self._default_dispatcher
        else:
            self.dispatcher = FixedMixture(alpha_or_adapter).bind(self)

    def dispatch(self, prompts: Sequence[Prompt]) -> list[DispatchDecision]:
        """Pass 1 only: the decision for each prompt (strings or chat messages)."""
        return self.dispatcher.dispatch(list(prompts))

    def _rows(self, decisions: Sequence[DispatchDecision]) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """Adapter name per row, and the temporary mixtures to build (one per distinct mixture)."""
        rows, mixtures, names = [], {}, {}
        for decision in decisions:
            adapter, mixture = decision.route()
            if mixture is not None:
                key = decision.key()
                if key not in names:
                    names[key] = self._fresh_name(f"__mix_{len(names)}")
                    mixtures[names[key]] = mixture
                adapter = names[key]
            rows.append(adapter)
        return rows, mixtures

    def _fresh_name(self, name: str) -> str:
        while name in self.model.peft_config:
            name = f"_{name}"
        return name

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompts: Sequence[Prompt] | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """Two-pass generation; returns what ``model.generate`` returns for the same inputs.

        Give ``input_ids`` (and ``attention_mask``) as for any model, or ``prompts`` (strings or chat
        messages, tokenised here with left padding). The decisions are kept in ``last_decisions``.
        """
        if "adapter_names" in generate_kwargs:
            raise ValueError("SelfAdaptiveModel chooses the adapters itself; do not pass adapter_names")
        if prompts is not None:
            if input_ids is not None:
                raise ValueError("pass either prompts or input_ids, not both")
            prompts = list(prompts)
            ensure_pad_token(self.tokenizer)
            enc = self.tokenizer([render(self.tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                                 padding_side="left", add_special_tokens=False).to(self.device)  # fmt: skip
            input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
            generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        elif input_ids is None:
            raise ValueError("generate needs input_ids or prompts")
        else:
            prompts = questions_from_ids(self.tokenizer, input_ids, attention_mask)
        decisions = self.dispatch(prompts)
        rows, mixtures = self._rows(decisions)
        if attention_mask is not None:
            generate_kwargs["attention_mask"] = attention_mask
        with temporary_mixtures(self.model, mixtures):
            out = routed_generate(self.model, rows, merge=self.merge, per_row_rank=self.per_row_rank,
                                  input_ids=input_ids, **generate_kwargs)  # fmt: skip
        self.last_decisions = decisions
        return out

    def adapt(
        self,
        few_shot_dataset: Any,
        reward_funcs: Any,
        config: CEMConfig | None = None,
        **legacy_settings: Any,
    ) -> CEMResult:
        """Strategy C: CEM search for the expert mixture that does best on ``few_shot_dataset``.

        The best mixture is added to ``self.model`` as adapter ``config.adapter_name``; use it with
        ``use_mixture(result.adapter_name)``. See :class:`~peft_svf.adaptive.cem.CEMConfig` and
        :func:`~peft_svf.adaptive.cem.cem_adapt`.
        """
        return cem_adapt(self, few_shot_dataset, reward_funcs, config, **legacy_settings)

    def extra_repr(self) -> str:
        return f"experts={self.experts}, dispatcher={type(self.dispatcher).__name__}"
