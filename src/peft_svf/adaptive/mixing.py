"""Expert mixtures in the dispatchers' and CEM's form: ``alpha = {expert: weight}`` over a ``PeftModel``.

The mixing itself is the tuner's (``SVFModel.add_weighted_adapter``, PEFT's name; the rule is
``SVFLayer.weighted_mixture``). Here ``alpha`` maps an expert to one weight or to ``{module: weight}`` (per
layer, modules named as in the base model, e.g. ``model.layers.0.mlp.up_proj``), and ``"__base__"`` to the
identity's share: the form a dispatcher or a CEM member produces.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from peft import PeftModel

from ..svf.layer import BASE, SVFLayer
from ..svf.model import Weight

__all__ = ["BASE", "Alpha", "layer_names", "mix_svf_adapters", "svf_layers", "temporary_mixtures"]

Alpha = Mapping[str, Weight]


def svf_layers(model: PeftModel) -> dict[str, SVFLayer]:
    """The SVF layers of ``model`` by module name in the base model (``model.layers.0.mlp.up_proj``)."""
    return model.base_model.svf_layers()


def layer_names(model: PeftModel) -> list[str]:
    """Module names of ``model``'s SVF layers, the keys of a per-layer alpha."""
    return list(svf_layers(model))


def mix_svf_adapters(model: PeftModel, alpha: Alpha, new_name: str) -> str:
    """``model.add_weighted_adapter(list(alpha), list(alpha.values()), new_name)``; returns ``new_name``.

    ``model.save_pretrained(dir, selected_adapters=[new_name])`` saves the mixture like any expert.
    """
    model.base_model.add_weighted_adapter(list(alpha), list(alpha.values()), new_name)
    return new_name


@contextmanager
def temporary_mixtures(model: PeftModel, mixtures: Mapping[str, Alpha]) -> Iterator[list[str]]:
    """Adapters ``{name: alpha}`` that exist only inside the block, usable as ``adapter_names`` rows
    (``SVFModel.temporary_weighted_adapters``)."""
    weighted = {name: (list(alpha), list(alpha.values())) for name, alpha in mixtures.items()}
    with model.base_model.temporary_weighted_adapters(weighted) as names:
        yield names
