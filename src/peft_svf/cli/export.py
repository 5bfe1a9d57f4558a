"""``peft-svf export``: an expert or a mixture as merged full weights or as a standard PEFT LoRA adapter.

Servers that take no SVF adapter take one of these: merged weights load with plain
``AutoModelForCausalLM`` (TGI, llama.cpp after conversion); a LoRA adapter loads with
``PeftModel.from_pretrained`` and in vLLM / SGLang. A LoRA export is the exact truncation of each layer's
change ``U diag(s' - s) V^T`` (the components with the largest ``|s'_i - s_i|``), so keeping every
component reproduces the expert within float rounding. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_expert_arguments, add_model_arguments, description, expert_dict, load_model

if TYPE_CHECKING:
    from peft import PeftModel

    from ..svf.low_rank import LoraExport

NAME = "export"
MIXTURE = "mixture"
EXAMPLES = """examples:
  peft-svf export --expert math=experts/math/expert --merged --output-dir exports/math-merged
  peft-svf export --expert math=experts/math/expert --lora-rank 64 --output-dir exports/math-lora64
  peft-svf export --expert math=experts/math/expert --expert code=experts/code/expert \\
      --alpha '{"math": 0.7, "code": 0.3}' --lora-energy 0.9 --output-dir exports/mix-lora
  peft-svf export --expert cem=outputs/transformer2/adapters/cem_arc_challenge --lora-rank 32 --output-dir exports/arc

--merged writes config.json, model.safetensors and the tokenizer; --lora-rank/--lora-energy write
adapter_config.json (peft_type LORA, lora_alpha = r) and adapter_model.safetensors."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME, help="an expert or mixture as merged weights or a PEFT LoRA adapter (for vLLM, SGLang, TGI)",
        description=description(__doc__), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_model_arguments(parser, device=False)
    add_expert_arguments(parser, required=True, dispatch=False)
    parser.add_argument("--alpha", default=None, metavar="JSON_OR_FILE",
                        help="mixture weights {expert: weight} (or per layer), as JSON or a .json file; a file "
                        "with an 'alpha' key (peft-svf adapt's results.json) works too. Needed for several experts")  # fmt: skip
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--merged", action="store_true", help="full weights with the change merged in")
    what.add_argument(
        "--lora-rank", type=int, metavar="K", help="LoRA keeping the K largest components per layer"
    )
    what.add_argument("--lora-energy", type=float, metavar="F",
                      help="LoRA keeping per layer the fewest components with share F in (0, 1] of the change's "
                      "energy (sum of squared singular-value changes); 1.0 is exact")  # fmt: skip
    parser.add_argument("--no-rank-cap", action="store_true",
                        help="allow ranks above vLLM's max_lora_rank 512 (PEFT-only use); refused by default")  # fmt: skip
    parser.add_argument("--base-model", default=None,
                        help="Hub id to record as the base model (default: the expert's, if a Hub id; the embedded "
                        "model's copy becomes HuggingFaceTB/SmolLM2-135M-Instruct; a local path is never written)")  # fmt: skip
    parser.add_argument("--output-dir", type=Path, required=True, help="where to write the export")
    parser.set_defaults(func=main)


def read_alpha(value: str) -> dict[str, Any]:
    """``--alpha``: inline JSON or a JSON file, either the weights or an object holding them under "alpha"."""
    path = Path(value)
    text = path.read_text(encoding="utf-8") if value.endswith(".json") or path.is_file() else value
    try:
        alpha = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--alpha is neither JSON nor a JSON file: {exc}") from None
    alpha = alpha.get("alpha", alpha) if isinstance(alpha, dict) else alpha
    if not isinstance(alpha, dict) or not alpha:
        raise ValueError(f"--alpha must be an object {{expert: weight}}, got {text[:80]!r}")
    return alpha


def load_svf_model(
    base: Any, experts: dict[str, str], alpha: dict[str, Any] | None = None
) -> tuple[PeftModel, str]:
    """``base`` with the experts loaded; the adapter to export: the single expert, or the ``alpha`` mixture."""
    from peft import PeftModel

    from ..adaptive.mixing import mix_svf_adapters

    if alpha is None and len(experts) > 1:
        raise ValueError(f"{len(experts)} experts given: say how to mix them with --alpha")
    (first, source), *others = experts.items()
    model = PeftModel.from_pretrained(base, source, adapter_name=first)
    for name, location in others:
        model.load_adapter(location, adapter_name=name)
    if alpha is None:
        return model.eval(), first
    unknown = sorted(set(alpha) - set(experts) - {"__base__"})
    if unknown:
        raise ValueError(f"--alpha names {unknown}, not among the experts {sorted(experts)}")
    name = mix_svf_adapters(model, alpha, MIXTURE)
    model.set_adapter(name)
    return model.eval(), name


def _is_quantised(layer: Any) -> bool:
    weight = layer.get_base_layer().weight
    return getattr(layer, "quantization_backend", None) is not None or not weight.dtype.is_floating_point


def _untie_adapted_weights(model: PeftModel, adapter_name: str) -> bool:
    """Give an adapted layer whose weight is shared (a tied ``lm_head``) its own copy, so merging changes
    only that layer, as the adapter does; returns whether anything was untied."""
    import torch

    from ..adaptive.mixing import svf_layers
    from ..svf.merging import parameter_uses

    uses = parameter_uses(model)
    untied = False
    for layer in svf_layers(model).values():
        base = layer.get_base_layer()
        if adapter_name in layer.svf_vector and uses[id(base.weight)] > 1:
            base.weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)
            untied = True
    return untied


def export_merged(
    model: PeftModel, adapter_name: str, tokenizer: Any, output_dir: Path, base_model: str | None = None
) -> Path:
    """Merge ``adapter_name`` into the base weights (the model is consumed) and save model and tokenizer.

    A quantised base is refused: merging would quantise the changed weights again, rounding much of the
    change away; export LoRA instead (its factors need no dense weight), or load the base unquantised.
    """
    from ..adaptive.mixing import svf_layers

    layers = [layer for layer in svf_layers(model).values() if adapter_name in layer.svf_vector]
    if any(_is_quantised(layer) for layer in layers):
        raise ValueError(
            "merged export needs a dense base, this one is quantised (merging would re-quantise the change "
            "away): load the base unquantised, or export a LoRA adapter (--lora-rank / --lora-energy)"
        )
    if _untie_adapted_weights(model, adapter_name):
        model.config.tie_word_embeddings = False
        model.config.get_text_config().tie_word_embeddings = False
    merged = model.merge_and_unload(adapter_names=[adapter_name])
    merged.config._name_or_path = _hub_base(merged.config._name_or_path, base_model) or ""
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def _hub_base(name_or_path: str | None, base_model: str | None) -> str | None:
    """What to record as the base model: ``--base-model``, else a Hub id, never a local path."""
    from ..hub import hub_base_model

    return base_model or hub_base_model(name_or_path)


def export_lora(
    model: PeftModel,
    adapter_name: str,
    rank_or_energy: int | float,
    output_dir: Path,
    max_rank: int | None,
    base_model: str | None = None,
) -> LoraExport:
    """Write ``adapter_name`` as a PEFT LoRA adapter (``PeftModel.from_pretrained`` and vLLM load it)."""
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    from ..svf.low_rank import svf_to_lora

    export = svf_to_lora(model, adapter_name, rank_or_energy, max_rank=max_rank)
    export.config.base_model_name_or_path = _hub_base(export.config.base_model_name_or_path, base_model)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(export.state_dict, str(output_dir / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    export.config.save_pretrained(str(output_dir))
    return export


def main(args: argparse.Namespace) -> int:
    from ..svf.low_rank import VLLM_MAX_LORA_RANK
    from .common import print_json

    alpha = read_alpha(args.alpha) if args.alpha else None
    base, tokenizer = load_model(args.model, "cpu", args.dtype)
    model, name = load_svf_model(base, expert_dict(args.experts), alpha)
    if args.merged:
        export_merged(model, name, tokenizer, args.output_dir, args.base_model)
        print(f"merged {name} into the base weights: {args.output_dir} (load with AutoModelForCausalLM)")
        return 0
    rank_or_energy = args.lora_rank if args.lora_rank is not None else args.lora_energy
    max_rank = None if args.no_rank_cap else VLLM_MAX_LORA_RANK
    export = export_lora(model, name, rank_or_energy, args.output_dir, max_rank, args.base_model)
    print_json({"adapter": name, "r": export.config.r, "mean_energy": export.mean_energy,
                "min_energy": min(export.energy.values()), "layers": len(export.ranks)})  # fmt: skip
    print(f"LoRA adapter written to {args.output_dir} (load with PeftModel.from_pretrained, or in vLLM)")
    return 0
