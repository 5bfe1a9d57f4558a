"""``SVFModel``: the PEFT tuner that injects SVF layers into a model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.constants import INCLUDE_LINEAR_LAYERS_SHORTHAND
from torch import nn

from .config import SVFConfig
from .layer import SVFLayer, dispatch_default

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Attention + MLP projections per architecture: the paper's Table 4 finds adapting both best.
TRANSFORMERS_MODELS_TO_SVF_TARGET_MODULES_MAPPING: dict[str, list[str]] = {
    **dict.fromkeys(
        [
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
        ],
        _LLAMA_LIKE,
    ),
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
}


class SVFModel(BaseTuner):
    """Singular Value Fine-tuning (Transformer², Sun, Cetin and Tang, ICLR 2025) as a PEFT tuner.

    Use it through PEFT, after ``import peft_svf``::

        >>> from peft import get_peft_model
        >>> from peft_svf import SVFConfig
        >>> model = get_peft_model(base_model, SVFConfig(task_type="CAUSAL_LM"))
        >>> model.print_trainable_parameters()
    """

    prefix: str = "svf_"
    tuner_layer_cls = SVFLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_SVF_TARGET_MODULES_MAPPING

    def _prepare_adapter_config(self, peft_config: SVFConfig, model_config: dict) -> SVFConfig:
        if peft_config.target_modules is None:
            mapped = self.target_module_mapping.get(model_config.get("model_type"))
            peft_config.target_modules = set(mapped) if mapped else INCLUDE_LINEAR_LAYERS_SHORTHAND
        return peft_config

    def _create_and_replace(
        self,
        svf_config: SVFConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        if isinstance(target, SVFLayer):
            target.update_layer(adapter_name, svf_config)
            return
        new_module = dispatch_default(target, adapter_name, svf_config, current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set active
        self._replace_module(parent, target_name, new_module, target)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Route ``adapter_names=[...]`` (one per row) from ``forward``/``generate`` into every SVF layer.

        Mirrors PEFT's LoRA mixed-batch inference, so a batch can mix experts and ``"__base__"`` rows.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        known = set().union(*(m.svf_vector.keys() for m in self.modules() if isinstance(m, SVFLayer)))
        unknown = {name for name in adapter_names if name != "__base__"} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        num_beams = kwargs.get("num_beams")
        if isinstance(num_beams, int) and num_beams > 1:  # generate repeats each row num_beams times
            adapter_names = [name for name in adapter_names for _ in range(num_beams)]
        handles = [
            module.register_forward_pre_hook(
                partial(_inject_adapter_names, adapter_names=adapter_names), with_kwargs=True
            )
            for module in self.modules()
            if isinstance(module, SVFLayer)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: SVFConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_state_dict(model, adapter_name, remapped)
        return remapped


def _inject_adapter_names(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def check_adapter_state_dict(
    model: nn.Module, adapter_name: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Refuse vectors that cannot belong to this base, before anything is copied into the model."""
    own = {
        k: v for k, v in model.state_dict().items() if ".svf_vector." in k and k.endswith(f".{adapter_name}")
    }
    problems = []
    for key, value in state_dict.items():
        if ".svf_vector." not in key:
            continue
        module = key.rsplit(".svf_vector.", 1)[0].removeprefix("base_model.model.")
        if key not in own:
            problems.append(f"the adapter has a vector for {module!r}, which this base model does not adapt")
        elif value.shape != own[key].shape:
            problems.append(
                f"{module!r}: the adapter's vector has shape {tuple(value.shape)} but this base model's "
                f"weight needs {tuple(own[key].shape)}"
            )
        elif not torch.isfinite(value).all():
            problems.append(
                f"{module!r}: the adapter's vector holds NaN or infinite values (corrupted file?)"
            )
    missing = sorted(set(own) - set(state_dict))
    if missing and len(missing) == len(own):
        problems.append(
            "the adapter file holds no SVF vector for any adapted module (wrong or corrupted file?)"
        )
    if problems:
        shown = "\n  - ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(
            f"SVF adapter {adapter_name!r} does not fit this base model (was it trained on another one?):\n"
            f"  - {shown}{more}"
        )
