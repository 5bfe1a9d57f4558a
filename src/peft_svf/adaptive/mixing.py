"""Mixing SVF experts into one adapter: ``z' = sum_k alpha_k z_k`` (paper 3.2 C), in the experts' own space.

For the ``"official"`` parameterisation the authors mix in mask space: ``m' = sum_k alpha_k sigmoid(p_k) *
max_mult_k``, then renormalise each matrix's singular-value mass, ``s' = s * m' * sum(s) / sum(s * m')``.
That renormalisation makes the result invariant to scaling ``m'``, so dividing by ``sum_k alpha_k`` gives a
mask inside ``(0, max_mult)`` that one stored vector ``p' = logit(m' / max_mult)`` represents exactly (to
float32 rounding of ``p'``). The mixture is therefore stored as an ordinary official adapter: it saves,
loads and converts like the experts. Only if a mask saturates (``sigmoid`` rounds to 0 or 1, so ``p'`` would
be infinite) is the mixture stored as a ``"scale"`` adapter holding the exact gain instead.

For ``"scale"`` experts the mixture is the literal ``z' = sum_k alpha_k z_k``.

``alpha`` is ``{expert: weight}`` (one weight per expert) or ``{expert: {module: weight}}`` (per layer,
modules named as in the base model, e.g. ``model.layers.0.mlp.up_proj``). The key ``"__base__"`` stands for
the identity vector (official ``p = init_value``, the authors' untrained start; scale ``z = 1``), so a
mixture can lean partly toward the base weights. All-zero weights mean the base weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from peft import PeftModel

from ..svf.config import SVFConfig
from ..svf.layer import SVFLayer, singular_value_gain

BASE = "__base__"
_MODEL_PREFIX = "base_model.model."
# Largest relative gain error accepted from storing p' in float32 before falling back to "scale".
_REPRESENTATION_TOL = 1e-6

Alpha = Mapping[str, float | Mapping[str, float]]


def svf_layers(model: PeftModel) -> dict[str, SVFLayer]:
    """The SVF layers of ``model`` by module name in the base model (``model.layers.0.mlp.up_proj``)."""
    return {
        name.removeprefix(_MODEL_PREFIX): module
        for name, module in model.named_modules()
        if isinstance(module, SVFLayer)
    }


def _layer_weights(alpha: Alpha, module: str) -> dict[str, float]:
    weights = {}
    for name, weight in alpha.items():
        if isinstance(weight, Mapping):
            if module not in weight:
                raise ValueError(f"per-layer alpha for {name!r} has no weight for module {module!r}")
            weight = weight[module]
        weights[name] = float(weight)
    return weights


def _expert_configs(model: PeftModel, alpha: Alpha) -> dict[str, SVFConfig]:
    experts = [name for name in alpha if name != BASE]
    if not experts:
        raise ValueError("alpha names no expert")
    configs = {}
    for name in experts:
        config = model.peft_config.get(name)
        if not isinstance(config, SVFConfig):
            raise ValueError(
                f"{name!r} is not an SVF adapter of this model (adapters: {list(model.peft_config)})"
            )
        configs[name] = config
    kinds = {config.parameterization for config in configs.values()}
    if len(kinds) > 1:
        raise ValueError(f"cannot mix experts of different parameterisations: {sorted(kinds)}")
    return configs


def mixture_vectors(
    model: PeftModel, alpha: Alpha, exact_gain: bool = False
) -> tuple[str, float, dict[str, torch.Tensor]]:
    """(parameterisation, max_mult, {module: vector}) of the adapter that is the ``alpha`` mixture.

    ``exact_gain`` always returns the gain itself as a ``"scale"`` vector: what temporary adapters use,
    since the layers then skip recomputing an official mask on every forward pass.
    """
    configs = _expert_configs(model, alpha)
    first = next(iter(configs.values()))
    layers = svf_layers(model)
    if first.parameterization == "scale":
        return (
            "scale",
            first.max_mult,
            {m: _scale_mix(layer, _layer_weights(alpha, m)) for m, layer in layers.items()},
        )
    max_mult = max(config.max_mult for config in configs.values())
    identity_mask = 1.0 / (1.0 + math.exp(-first.init_value))
    vectors, gains = {}, {}
    for module, layer in layers.items():
        weights = _layer_weights(alpha, module)
        vectors[module], gains[module] = _official_mix(layer, weights, max_mult, identity_mask)
    as_gains = {module: gain.float() for module, gain in gains.items()}
    if exact_gain:
        return "scale", 1.0, as_gains
    # Finite p' only: a saturated mask needs p' = +-inf, which no adapter file may hold.
    exact = all(
        torch.isfinite(vectors[m]).all()
        and _relative_error(singular_value_gain(vectors[m], layers[m].svf_S, "official", max_mult), gains[m])
        <= _REPRESENTATION_TOL
        for m in layers
    )
    return ("official", max_mult, vectors) if exact else ("scale", 1.0, as_gains)


def _check_adapted(layer: SVFLayer, names: list[str]) -> None:
    missing = [name for name in names if name not in layer.svf_vector]
    if missing:
        raise ValueError(f"experts {missing} do not adapt every layer the others adapt; cannot mix them")


def _scale_mix(layer: SVFLayer, weights: dict[str, float]) -> torch.Tensor:
    experts = [name for name, weight in weights.items() if name != BASE and weight != 0.0]
    _check_adapted(layer, experts)
    if sum(weights.values()) == 0.0:
        return torch.ones_like(layer.svf_S)
    mixed = torch.full_like(layer.svf_S, weights.get(BASE, 0.0), dtype=torch.float64)
    for name in experts:
        mixed = mixed + weights[name] * layer.svf_vector[name].detach().double()
    return mixed.float()


def _official_mix(
    layer: SVFLayer, weights: dict[str, float], max_mult: float, identity_mask: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored p', exact float64 gain) of one layer's official mixture."""
    nonzero = {name: weight for name, weight in weights.items() if weight != 0.0}
    if any(weight < 0 for weight in nonzero.values()):
        raise ValueError(f"official mixtures need non-negative alpha, got {weights}")
    experts = [name for name in nonzero if name != BASE]
    _check_adapted(layer, experts)
    s = layer.svf_S.double()
    if not nonzero:  # no expert chosen: the base weights
        return torch.full_like(layer.svf_S, math.log(identity_mask / (1 - identity_mask))), torch.ones_like(s)
    if len(experts) == 1 and BASE not in nonzero and layer.svf_max_mult[experts[0]] == max_mult:
        # One expert at any weight is that expert (the renormalisation undoes the scale): copy it bit for bit.
        vector = layer.svf_vector[experts[0]].detach().float().clone()
        mask = torch.sigmoid(vector.double()) * max_mult
        return vector, mask * (s.sum() / (s * mask).sum())
    total = sum(nonzero.values())
    mask = torch.full_like(s, identity_mask * max_mult * nonzero.get(BASE, 0.0) / total)
    for name in experts:
        vector = layer.svf_vector[name].detach().double()
        mask = mask + (nonzero[name] / total) * torch.sigmoid(vector) * layer.svf_max_mult[name]
    gain = mask * (s.sum() / (s * mask).sum())
    ratio = mask / max_mult
    return torch.log(ratio / (1 - ratio)).float(), gain


def _relative_error(gain: torch.Tensor, exact: torch.Tensor) -> float:
    if not torch.isfinite(gain).all():
        return math.inf
    return ((gain.double() - exact).abs() / exact.abs().clamp_min(1e-30)).max().item()


def mix_svf_adapters(model: PeftModel, alpha: Alpha, new_name: str) -> str:
    """Add ``new_name``, the ``alpha`` mixture of ``model``'s SVF experts, as an ordinary saveable adapter.

    Nothing else changes: the active adapter and every parameter's ``requires_grad`` stay as they were.
    Returns ``new_name``; ``model.save_pretrained(dir, selected_adapters=[new_name])`` saves it.
    """
    if new_name in model.peft_config:
        raise ValueError(f"an adapter named {new_name!r} exists already")
    parameterization, max_mult, vectors = mixture_vectors(model, alpha)
    expert = next(name for name in alpha if name != BASE)
    config = copy.deepcopy(model.peft_config[expert])
    config.parameterization, config.max_mult = parameterization, max_mult
    config.init_noise_std, config.inference_mode = 0.0, True
    grads = {param: param.requires_grad for param in model.parameters()}
    model.add_adapter(new_name, config)
    for param in model.parameters():
        param.requires_grad_(grads.get(param, False))
    layers = svf_layers(model)
    with torch.no_grad():
        for module, vector in vectors.items():
            layers[module].svf_vector[new_name].copy_(vector)
    return new_name


@contextmanager
def temporary_mixtures(model: PeftModel, mixtures: Mapping[str, Alpha]) -> Iterator[list[str]]:
    """Adapters ``{name: alpha}`` that exist only inside the block, usable as ``adapter_names`` rows.

    They are written straight into the layers (no PEFT config, no ``add_adapter`` walk over the model) as
    their exact gains, which keeps a CEM generation's 32 mixtures cheap to build and to run, and removed
    on exit even after an error.
    """
    layers = svf_layers(model)
    clashes = [name for name in mixtures if name in model.peft_config or name == BASE]
    if clashes:
        raise ValueError(f"temporary adapter names clash with existing adapters: {clashes}")
    created: list[str] = []
    try:
        for name, alpha in mixtures.items():
            parameterization, max_mult, vectors = mixture_vectors(model, alpha, exact_gain=True)
            for module, vector in vectors.items():
                layer = layers[module]
                layer.svf_vector[name] = torch.nn.Parameter(
                    vector.to(layer.svf_S.device), requires_grad=False
                )
                layer.svf_parameterization[name] = parameterization
                layer.svf_max_mult[name] = max_mult
            created.append(name)
        yield created
    finally:
        for layer in layers.values():
            for name in mixtures:
                if name in layer.svf_vector:
                    del layer.svf_vector[name]
                layer.svf_parameterization.pop(name, None)
                layer.svf_max_mult.pop(name, None)


def layer_names(model: PeftModel) -> list[str]:
    """Module names of ``model``'s SVF layers, the keys of a per-layer alpha."""
    return list(svf_layers(model))
