"""``SVFModel``: the PEFT tuner that injects SVF layers into a model."""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import get_quantization_kwargs, resolve_quantization_backend
from peft.utils.constants import (
    CONFIG_NAME,
    INCLUDE_LINEAR_LAYERS_SHORTHAND,
    SAFETENSORS_WEIGHTS_NAME,
    WEIGHTS_NAME,
)
from safetensors import SafetensorError
from torch import nn
from transformers import PretrainedConfig
from transformers.pytorch_utils import Conv1D

from .config import SVFConfig
from .layer import BASE, Linear, SVFLayer, singular_value_gain

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


# Largest relative gain error accepted from storing a mixture's p' in float32 before storing it as "scale".
_REPRESENTATION_TOL = 1e-6

# Settings of the one decomposition per layer that all adapters share, fixed by the first adapter.
_SHARED_FIELDS = ("keep_base_weight", "svd_dtype", "factors_dtype")

# A mixture weight: one number for the whole adapter, or one per module (named as in the base model).
Weight = float | Mapping[str, float]

_SUPPORTED = (
    "torch.nn.Linear, transformers' Conv1D and linear layers quantised with a backend that dequantises "
    "(bitsandbytes 4/8-bit, HQQ, torchao)"
)


def _get_tuner_layer_class(base: nn.Module, **kwargs: Any) -> type[SVFLayer] | None:
    """The SVF layer class for this base module, or None (as VeRA's ``_get_tuner_layer_class``).

    SVF decomposes the weight, so a quantised base needs a backend that can dequantise it (PEFT's
    ``supports_merge``); forward-only ones (GPTQ, AWQ, EETQ...) cannot be decomposed.
    """
    backend = resolve_quantization_backend(base, **kwargs)
    if backend is None:
        return Linear if isinstance(base, (nn.Linear, Conv1D)) else None
    return Linear if backend.supports_merge and backend.layer_type == "linear" else None


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

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """PEFT's injection, undone if it fails part-way (e.g. one unsupported module among the targets)."""
        with rolled_back_on_error(model):
            super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _check_new_adapter_config(self, config: SVFConfig) -> None:
        """Refuse an adapter whose decomposition settings differ from the existing adapters' (PEFT's hook).

        Every adapter of a layer rescales the same ``U diag(s) V^T``, made (and ``W`` kept or freed) when
        the first adapter was added, so a later adapter's different value could not apply. ``forward_mode``
        is per adapter instead: it only chooses how that adapter's change is computed.
        """
        super()._check_new_adapter_config(config)
        for name, other in self.peft_config.items():
            if other is config:
                continue
            for field_name in _SHARED_FIELDS:
                new, old = getattr(config, field_name), getattr(other, field_name)
                if new != old:
                    raise ValueError(
                        f"SVFConfig.{field_name}={new!r} of the new adapter conflicts with {old!r} of adapter "
                        f"{name!r}: all SVF adapters of a model share one decomposition of each weight, made "
                        f"with the first adapter's {field_name}, so {new!r} could not apply. Use {old!r}."
                    )

    @classmethod
    def _prepare_adapter_config(cls, peft_config: SVFConfig, model_config: dict) -> SVFConfig:
        """``target_modules=None``: the architecture's attention and MLP projections, else every linear layer.

        A classmethod (IA3's is a staticmethod), so that counting can resolve targets without a tuner.
        """
        if peft_config.target_modules is None:
            mapped = cls.target_module_mapping.get(model_config.get("model_type"))
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
        new_module = self._create_new_module(
            svf_config, adapter_name, target, current_key, **get_quantization_kwargs(self.model)
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set active
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(
        svf_config: SVFConfig, adapter_name: str, target: nn.Module, module_name: str, **kwargs: Any
    ) -> SVFLayer:
        """Wrap ``target`` in the SVF layer for its type, or explain which types are supported."""
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        layer_cls = _get_tuner_layer_class(base, **kwargs)
        if layer_cls is None:
            raise ValueError(
                f"SVF cannot adapt module {module_name!r} of type {type(base).__name__}: it supports {_SUPPORTED}. "
                "Narrow `target_modules` (or use `exclude_modules`)."
            )
        return layer_cls(target, adapter_name, svf_config, **kwargs)

    # -- mixing (Transformer² section 3.2 C) ----------------------------------------------------------------
    def svf_layers(self) -> dict[str, SVFLayer]:
        """The SVF layers by module name in the base model (``model.layers.0.mlp.up_proj``)."""
        return {name: module for name, module in self.model.named_modules() if isinstance(module, SVFLayer)}

    def weighted_vectors(
        self, adapters: Sequence[str], weights: Sequence[Weight], exact_gain: bool = False
    ) -> tuple[str, float, dict[str, torch.Tensor]]:
        """(parameterisation, max_mult, {module: vector}) of the adapter mixing ``adapters`` by ``weights``.

        An official mixture is stored as an official vector when float32 ``p'`` represents its gain
        exactly (to ``_REPRESENTATION_TOL``), else (a saturated mask) as a ``"scale"`` vector holding the
        gain. ``exact_gain`` always returns the gain as a ``"scale"`` vector: what temporary adapters use,
        since the layers then skip recomputing an official mask on every forward pass.
        """
        if len(adapters) != len(weights) or len(set(adapters)) != len(adapters):
            raise ValueError(
                f"need one weight per distinct adapter, got {list(adapters)} and {list(weights)}"
            )
        experts = [name for name in adapters if name != BASE]
        if not experts:
            raise ValueError("add_weighted_adapter needs at least one adapter besides the base")
        configs = [self.peft_config.get(name) for name in experts]
        unknown = [
            name for name, config in zip(experts, configs, strict=True) if not isinstance(config, SVFConfig)
        ]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: not an SVF adapter of this model (adapters: {list(self.peft_config)})"
            )
        kinds = {config.parameterization for config in configs}
        if len(kinds) > 1:
            raise ValueError(f"cannot mix experts of different parameterisations: {sorted(kinds)}")
        parameterization = kinds.pop()
        max_mult = max(config.max_mult for config in configs) if parameterization == "official" else 1.0
        identity = configs[0].init_value if parameterization == "official" else 1.0
        layers = {m: layer for m, layer in self.svf_layers().items() if set(experts) & set(layer.svf_vector)}
        vectors, gains = {}, {}
        for module, layer in layers.items():
            per_layer = {
                name: _weight_for(name, weight, module)
                for name, weight in zip(adapters, weights, strict=True)
            }
            vectors[module], gains[module] = layer.weighted_mixture(
                per_layer, parameterization, max_mult, identity
            )
        exact = parameterization == "scale" or (
            not exact_gain
            and all(
                torch.isfinite(vectors[m]).all()  # a saturated mask needs p' = +-inf, which no file may hold
                and _relative_error(
                    singular_value_gain(vectors[m], layers[m].svf_S, "official", max_mult), gains[m]
                )
                <= _REPRESENTATION_TOL
                for m in layers
            )
        )
        if exact:
            return parameterization, max_mult, vectors
        return "scale", 1.0, {module: gain.float() for module, gain in gains.items()}

    def add_weighted_adapter(self, adapters: list[str], weights: list[Weight], adapter_name: str) -> None:
        """Add ``adapter_name``, the ``weights`` mixture of ``adapters``, as an ordinary saveable adapter.

        PEFT's method (IA3, LoRA), with SVF's mixing rule (see ``SVFLayer.weighted_mixture``): a weight is a
        number or ``{module: number}`` (per layer), and ``"__base__"`` among ``adapters`` is the identity, so a
        mixture can lean partly toward the base weights. Unlike PEFT's methods, an existing ``adapter_name``
        is an error rather than silently kept. The active adapter and every ``requires_grad`` stay as they were.
        """
        if adapter_name in self.peft_config or adapter_name == BASE:
            raise ValueError(f"an adapter named {adapter_name!r} exists already")
        parameterization, max_mult, vectors = self.weighted_vectors(adapters, weights)
        config = copy.deepcopy(self.peft_config[next(name for name in adapters if name != BASE)])
        config.target_modules, config.exclude_modules = set(vectors), None
        config.layers_to_transform = config.layers_pattern = None
        config.parameterization, config.max_mult = parameterization, max_mult
        config.init_noise_std, config.inference_mode = 0.0, True
        grads = {param: param.requires_grad for param in self.model.parameters()}
        self.peft_config[adapter_name] = config
        try:
            self.inject_adapter(self.model, adapter_name)
        except Exception:
            del self.peft_config[adapter_name]
            raise
        self._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=True)
        for param in self.model.parameters():
            param.requires_grad_(grads.get(param, False))
        layers = self.svf_layers()
        with torch.no_grad():
            for module, vector in vectors.items():
                layers[module].svf_vector[adapter_name].copy_(vector)

    @contextmanager
    def temporary_weighted_adapters(
        self, mixtures: Mapping[str, tuple[Sequence[str], Sequence[Weight]]]
    ) -> Iterator[list[str]]:
        """Weighted adapters ``{name: (adapters, weights)}`` that exist only inside the block.

        Usable as ``adapter_names`` rows. They have no PEFT config and skip ``inject_adapter``'s walk over
        the model (each layer just holds the exact gain as a vector), which keeps a CEM generation's 32
        candidates cheap to build and to run; they are deleted on exit, even after an error.
        """
        clashes = [name for name in mixtures if name in self.peft_config or name == BASE]
        if clashes:
            raise ValueError(f"temporary adapter names clash with existing adapters: {clashes}")
        layers = self.svf_layers()
        try:
            for name, (adapters, weights) in mixtures.items():
                parameterization, max_mult, vectors = self.weighted_vectors(
                    adapters, weights, exact_gain=True
                )
                for module, vector in vectors.items():
                    layers[module].set_vector(name, vector, parameterization, max_mult, requires_grad=False)
            yield list(mixtures)
        finally:
            for layer in layers.values():
                for name in mixtures:
                    layer.delete_adapter(name)

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


def _weight_for(adapter: str, weight: Weight, module: str) -> float:
    if isinstance(weight, Mapping):
        if module not in weight:
            raise ValueError(f"per-layer weights for {adapter!r} have no weight for module {module!r}")
        return float(weight[module])
    return float(weight)


def _relative_error(gain: torch.Tensor, exact: torch.Tensor) -> float:
    if not torch.isfinite(gain).all():
        return math.inf
    return ((gain.double() - exact).abs() / exact.abs().clamp_min(1e-30)).max().item()


def _inject_adapter_names(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _belongs_to_adapter(key: str, adapter_name: str) -> bool:
    """Whether a model state-dict key names a tensor of this adapter (its vector, modules_to_save copy...)."""
    return key.endswith(f".{adapter_name}") or f".{adapter_name}." in key


def check_adapter_state_dict(
    model: nn.Module, adapter_name: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Refuse tensors that cannot belong to this base or this adapter, before anything is copied in.

    PEFT passes keys it cannot map through unchanged, and ``load_state_dict`` would then write them into the
    base model's own weights: an SVF adapter file holds only its vectors and ``modules_to_save`` copies.
    """
    model_state = model.state_dict()
    own = {k: v for k, v in model_state.items() if ".svf_vector." in k and k.endswith(f".{adapter_name}")}
    problems = []
    for key, value in state_dict.items():
        # PEFT adds the adapter name to the keys it can map to this model and passes the others unchanged.
        if ".svf_vector." not in key and not key.endswith(".svf_vector"):
            expected = model_state.get(key)
            if expected is None or not _belongs_to_adapter(key, adapter_name):
                problems.append(f"the adapter file has {key!r}, which is not a tensor of an SVF adapter here")
            elif value.shape != expected.shape:
                problems.append(
                    f"{key!r}: shape {tuple(value.shape)} in the adapter file, {tuple(expected.shape)} here"
                )
            elif value.is_floating_point() and not torch.isfinite(value).all():
                problems.append(f"{key!r} holds NaN or infinite values (corrupted file?)")
            continue
        module = key.rsplit(".svf_vector", 1)[0].removeprefix("base_model.model.")
        if key not in own:
            problems.append(f"the adapter has a vector for {module!r}, which this base model does not adapt")
        elif value.shape != own[key].shape:
            problems.append(
                f"{module!r}: the adapter's vector has shape {tuple(value.shape)} but this base model's "
                f"weight needs {tuple(own[key].shape)}"
            )
        elif not value.is_floating_point():
            problems.append(f"{module!r}: the adapter's vector has dtype {value.dtype}, not a float dtype")
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


# -- failed loads change nothing ---------------------------------------------------------------------------
@dataclass
class ModuleTreeSnapshot:
    """What injecting or loading an adapter may change in a module tree, kept to put it back exactly.

    For each module (and transformers config) the attributes and one level of container contents (child
    modules, parameters, buffers, hooks, PEFT's per-adapter dicts); for each parameter its tensor (a
    ``keep_base_weight=False`` adapter swaps the weight for an empty one) and ``requires_grad``.
    """

    attributes: list[tuple[object, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    parameters: list[tuple[nn.Parameter, torch.Tensor, bool]] = field(default_factory=list)


def _contents(value: Any) -> Any:
    """A plain copy of a container's items (restored into the original container), else None."""
    for kind in (dict, list, set):
        if isinstance(value, kind):
            return kind(value)
    return None


def snapshot_module_tree(*roots: nn.Module) -> ModuleTreeSnapshot:
    snapshot = ModuleTreeSnapshot()
    seen: set[int] = set()
    for root in roots:
        for module in root.modules():
            owners = [module]
            config = module.__dict__.get("config")
            if isinstance(config, PretrainedConfig):  # PeftModel sets pretraining_tp on it
                owners.append(config)
            for owner in owners:
                if id(owner) in seen:
                    continue
                seen.add(id(owner))
                attributes = dict(owner.__dict__)
                copies = {k: _contents(v) for k, v in attributes.items()}
                contents = {k: copy for k, copy in copies.items() if copy is not None}
                snapshot.attributes.append((owner, attributes, contents))
            for param in module._parameters.values():
                if param is not None and id(param) not in seen:
                    seen.add(id(param))
                    snapshot.parameters.append((param, param.data, param.requires_grad))
    return snapshot


def restore_module_tree(snapshot: ModuleTreeSnapshot) -> None:
    """Put back every attribute, container content and parameter tensor recorded in ``snapshot``."""
    for owner, attributes, contents in snapshot.attributes:
        for key in set(owner.__dict__) - set(attributes):
            del owner.__dict__[key]
        owner.__dict__.update(attributes)
        for key, saved in contents.items():
            container = attributes[key]
            if isinstance(container, list):
                container[:] = saved
            else:  # dict or set, in place: other objects may share them (model.peft_config is PEFT's dict)
                container.clear()
                container.update(saved)
    for param, data, requires_grad in snapshot.parameters:
        current = param.data
        if (current.data_ptr(), current.shape, current.dtype) != (data.data_ptr(), data.shape, data.dtype):
            param.data = data
        param.requires_grad_(requires_grad)


@contextmanager
def rolled_back_on_error(*roots: nn.Module) -> Iterator[None]:
    """Run a block that changes ``roots``; if it raises, restore them as they were, then re-raise."""
    snapshot = snapshot_module_tree(*roots)
    try:
        yield
    except BaseException:
        restore_module_tree(snapshot)
        raise


_PICKLE_REFUSED = (
    "Refusing to load {file}: SVF adapters download from the Hub as {safetensors} only, because unpickling a "
    "downloaded file can run code. Convert it where it was made (save_pretrained writes safetensors)."
).replace("{safetensors}", SAFETENSORS_WEIGHTS_NAME)


@contextmanager
def _refusing_downloaded_pickles(where: str) -> Iterator[None]:
    """Keep PEFT from falling back to a Hub repo's ``adapter_model.bin`` (a pickle) when it has no safetensors.

    A local folder's ``adapter_model.bin`` (``save_pretrained(safe_serialization=False)``, which PEFT's own
    suite round-trips) still loads, through PEFT's ``torch.load(weights_only=True)``, with a warning.
    """
    from peft.utils import save_and_load

    if os.path.isdir(where):
        if not os.path.isfile(os.path.join(where, SAFETENSORS_WEIGHTS_NAME)):
            warnings.warn(
                f"Loading the SVF adapter {where} from {WEIGHTS_NAME}, a pickle (read with torch's weights-only "
                f"unpickler); save it with safetensors (the default) to avoid pickles altogether.",
                stacklevel=4,
            )
        yield
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ValueError(_PICKLE_REFUSED.format(file=f"{WEIGHTS_NAME} of {where}"))

    original, save_and_load.torch_load = save_and_load.torch_load, refuse
    try:
        yield
    finally:
        save_and_load.torch_load = original


def _unreadable_config(where: Any, err: json.JSONDecodeError) -> ValueError:
    return ValueError(f"{CONFIG_NAME} of the adapter {where} is not valid JSON: {err}")


@contextmanager
def _naming_unreadable_files(model_id: Any, subfolder: str | None) -> Iterator[None]:
    """Name the file when the weights are missing or unreadable or the config is not JSON; refuse Hub pickles.

    PEFT looks a local folder without weights up on the Hub ("Repo id must be in the form..."), and
    safetensors' errors ("Error while deserializing header...") do not say which file they are about.
    """
    where = os.path.join(str(model_id), subfolder) if subfolder else str(model_id)
    if os.path.isdir(where) and not any(
        os.path.isfile(os.path.join(where, name)) for name in (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)
    ):
        raise FileNotFoundError(f"The SVF adapter folder {where} has no {SAFETENSORS_WEIGHTS_NAME}.")
    try:
        with _refusing_downloaded_pickles(where):
            yield
    except json.JSONDecodeError as err:
        raise _unreadable_config(where, err) from err
    except SafetensorError as err:
        raise ValueError(
            f"Could not read the SVF adapter weights {SAFETENSORS_WEIGHTS_NAME} in {where} (truncated or "
            f"corrupted file?): {err}"
        ) from err


def _names_svf(model_id: Any, config: Any, hub_kwargs: dict[str, Any]) -> bool:
    """Whether this load is of an SVF adapter (only those get the rollback; other methods keep PEFT's ways)."""
    from peft import PeftConfig

    from .peft_type import SVF_PEFT_TYPE

    if config is not None:
        return isinstance(config, SVFConfig)
    try:
        return PeftConfig._get_peft_type(str(model_id), **hub_kwargs) == SVF_PEFT_TYPE
    except json.JSONDecodeError as err:  # PEFT's own error would not say which file
        raise _unreadable_config(model_id, err) from err
    except Exception:  # no readable config: PEFT raises its own error before touching the model
        return False


def make_loads_transactional(peft_model_cls: type) -> None:
    """Wrap ``PeftModel.from_pretrained`` and ``load_adapter`` so that a failed SVF load changes nothing.

    ``from_pretrained`` injects layers into the user's model before ``load_adapter`` reads the weights, so a
    weights file for another base, truncated or holding NaNs used to leave SVF layers behind. Idempotent.
    """
    if getattr(peft_model_cls.load_adapter, "_svf_transactional", False):
        return
    from_pretrained = peft_model_cls.from_pretrained.__func__
    load_adapter = peft_model_cls.load_adapter
    signature = inspect.signature(from_pretrained)

    @functools.wraps(from_pretrained)
    def transactional_from_pretrained(cls: type, model: nn.Module, model_id: Any, *args: Any, **kwargs: Any):
        bound = signature.bind_partial(cls, model, model_id, *args, **kwargs).arguments
        hub_kwargs = {k: kwargs[k] for k in ("subfolder", "revision", "cache_dir", "token") if k in kwargs}
        if not _names_svf(model_id, bound.get("config"), hub_kwargs):
            return from_pretrained(cls, model, model_id, *args, **kwargs)
        with _naming_unreadable_files(model_id, kwargs.get("subfolder")), rolled_back_on_error(model):
            return from_pretrained(cls, model, model_id, *args, **kwargs)

    @functools.wraps(load_adapter)
    def transactional_load_adapter(
        self: nn.Module, model_id: Any, adapter_name: str, *args: Any, **kwargs: Any
    ):
        from .peft_type import SVF_PEFT_TYPE

        if adapter_name in self.peft_config or self.peft_type != SVF_PEFT_TYPE:
            return load_adapter(self, model_id, adapter_name, *args, **kwargs)
        with _naming_unreadable_files(model_id, kwargs.get("subfolder")), rolled_back_on_error(self):
            return load_adapter(self, model_id, adapter_name, *args, **kwargs)

    transactional_load_adapter._svf_transactional = True
    peft_model_cls.from_pretrained = classmethod(transactional_from_pretrained)
    peft_model_cls.load_adapter = transactional_load_adapter
