"""Move an SVF expert to another model of the same layout (the paper's Table 5 and Table 9).

An SVF expert holds one vector per adapted weight matrix, indexed by singular component: "scale the i-th
largest singular direction of this matrix by g_i". Loaded onto another model with the same module names
and shapes it loads without complaint, but it then scales *that* model's i-th singular directions, which
are other vectors. So the transfer means something only as far as the two models share their singular
directions: a fine-tune and its base share most of them, two independently trained models (Llama-3-8B
and Mistral-7B, which have the same layout) much less, and whether it helps is measured, not assumed.
The paper found Llama-3-8B-Instruct experts help Mistral-7B-Instruct-v0.3 on 2 of 3 tasks, and help
more than the same vectors shuffled, which destroys the ordering by singular value. A model of another
layout is refused with an error listing the modules whose vectors do not fit. (The check can only compare
vector lengths, min(m, n): matrices that differ only in their larger side, e.g. another MLP width at the
same hidden size, accept each other's vectors.)

The script loads the expert onto the target, compares the weight change it makes there with the one it
makes on the source (cosine of the two dense changes of one matrix; with --quick also for a fine-tune
of the source, which shares its singular directions), builds the shuffled control the paper uses,
optionally evaluates base / transferred / shuffled on a task, and shows the refusal:

    # GPU + Hub: the paper's pair (an expert trained on Llama-3-8B-Instruct, e.g. by llama3_gpu_recipe.py)
    python examples/cross_model_transfer.py --expert experts/llama3-8b/gsm8k/expert \\
        --source meta-llama/Meta-Llama-3-8B-Instruct --target mistralai/Mistral-7B-Instruct-v0.3 \\
        --task math --n 500
    # Hub: an expert of the embedded SmolLM2-135M-Instruct (python -m peft_svf.trainer --task offline_math)
    python examples/cross_model_transfer.py --expert experts/offline_math-svf-seed0/expert \\
        --target HuggingFaceTB/SmolLM2-135M --task offline_math --n 200
    python examples/cross_model_transfer.py --quick     # two tiny random Llamas, CPU, seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from peft_svf import SVFConfig
from peft_svf.svf import SVFLayer


def tiny_llama(seed: int, hidden: int = 64) -> LlamaForCausalLM:
    """The seed sets the weights, ``hidden`` the layout (every matrix's rank)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=hidden * 3 // 2, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def load(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and its tokenizer by Hub id or folder; "embedded" is the packaged SmolLM2-135M-Instruct."""
    if name == "embedded":
        from peft_svf.embedded import load_embedded_model

        return load_embedded_model(dtype)
    device_map = "auto" if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=device_map)
    return model.eval(), AutoTokenizer.from_pretrained(name)


def perturbed(model: LlamaForCausalLM, relative: float = 0.02, seed: int = 3) -> LlamaForCausalLM:
    """A stand-in for a fine-tune of ``model``: every weight moved by ``relative`` of its std."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(relative * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return model


def svf_layers(model: torch.nn.Module) -> dict[str, SVFLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SVFLayer)}


def vectors(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    return {name: m.svf_vector[adapter].detach().cpu() for name, m in svf_layers(model).items()}


def add_shuffled_control(model: PeftModel, expert_dir: str, seed: int = 0) -> None:
    """The paper's control: the same values, each vector randomly permuted (singular-value order lost)."""
    model.load_adapter(expert_dir, adapter_name="shuffled")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in svf_layers(model).values():
            vector = layer.svf_vector["shuffled"]
            vector.copy_(vector[torch.randperm(vector.numel(), generator=generator).to(vector.device)])


def weight_change_cosine(source: PeftModel, target: PeftModel, module: str) -> float:
    """Cosine between the dense changes W' - W the same vector makes on the two models' matrix."""
    delta_source = svf_layers(source)[module].get_delta_weight("expert").float().flatten().cpu()
    delta_target = svf_layers(target)[module].get_delta_weight("expert").float().flatten().cpu()
    return torch.nn.functional.cosine_similarity(delta_source, delta_target, dim=0).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expert", help="adapter folder trained on --source")
    parser.add_argument("--source", default="embedded", help="the expert's base ('embedded' = SmolLM2)")
    parser.add_argument("--target", help="Hub id or folder of a model with the same layout")
    parser.add_argument("--mismatched", help="a model of another layout, to show the refusal")
    parser.add_argument("--task", help="registered task to evaluate base / transferred / shuffled on")
    parser.add_argument("--n", type=int, default=200, help="test items to evaluate")
    parser.add_argument("--quick", action="store_true", help="two tiny random Llamas on the CPU")
    parser.add_argument("--output-dir", default="outputs/cross_model_transfer")
    args = parser.parse_args()
    if not args.quick and not (args.expert and args.target):
        parser.error("--expert and --target are needed unless --quick")
    dtype = torch.bfloat16 if torch.cuda.is_available() and not args.quick else torch.float32
    output = Path(args.output_dir)

    if args.quick:
        # Stand-in for a trained expert on model A: random vectors, far from the identity.
        source = get_peft_model(tiny_llama(seed=0), SVFConfig(init_noise_std=1.0), adapter_name="expert")
        expert_dir = str(output / "source-expert")
        source.save_pretrained(expert_dir, selected_adapters=["expert"])
        expert_dir += "/expert"  # PEFT saves a named adapter in a subfolder
        target_base, mismatched_base = tiny_llama(seed=1), tiny_llama(seed=2, hidden=32)
    else:
        expert_dir = args.expert
        source = PeftModel.from_pretrained(load(args.source, dtype)[0], expert_dir, adapter_name="expert")
        target_base, tokenizer = load(args.target, dtype)
        mismatched_base = load(args.mismatched, dtype)[0] if args.mismatched else None

    # 1. Same layout: the expert loads, vector for vector.
    target = PeftModel.from_pretrained(target_base, expert_dir, adapter_name="expert")
    source_vectors, target_vectors = vectors(source, "expert"), vectors(target, "expert")
    identical = source_vectors.keys() == target_vectors.keys() and all(
        torch.equal(source_vectors[k], target_vectors[k]) for k in source_vectors
    )
    print(f"loaded onto the target: {len(target_vectors)} vectors, identical to the source's: {identical}")

    # 2. The same vectors change the two models' weights along each model's own singular directions.
    module = next(name for name in source_vectors if name.endswith("mlp.down_proj"))
    short = module.removeprefix("base_model.model.")
    print(f"cosine(W' - W on source, W' - W on target) for {short}: "
          f"{weight_change_cosine(source, target, module):.3f}")  # fmt: skip
    if args.quick:  # what a model sharing the source's singular directions (a fine-tune of it) gets
        related = PeftModel.from_pretrained(perturbed(tiny_llama(seed=0)), expert_dir, adapter_name="expert")
        print(f"cosine for the same matrix of a fine-tune of the source: "
              f"{weight_change_cosine(source, related, module):.3f}")  # fmt: skip

    # 3. The paper's shuffled control, saved next to the transferred expert for evaluation.
    add_shuffled_control(target, expert_dir)
    shuffled = vectors(target, "shuffled")
    permuted = all(torch.equal(shuffled[k].sort().values, target_vectors[k].sort().values) for k in shuffled)
    print(f"shuffled control: each vector's values permuted: {permuted}")
    target.save_pretrained(str(output / "target"), selected_adapters=["expert", "shuffled"])
    print(f"saved the transferred expert and its shuffled control under {output / 'target'}")

    if args.task and not args.quick:
        from peft_svf.tasks import evaluate, get_task

        task = get_task(args.task)
        with target.disable_adapter():
            base = evaluate(target, task, tokenizer, n=args.n).accuracy
        print(f"{args.task} on {args.target}: base {base:.2%}")
        for name in ("expert", "shuffled"):
            target.set_adapter(name)
            result = evaluate(target, task, tokenizer, n=args.n, base_accuracy=base)
            print(f"  + {name:<8} {result.accuracy:.2%} ({result.normalized_score:.2f})")

    # 4. Another layout: refused before anything is copied, naming the modules.
    if mismatched_base is not None:
        try:
            PeftModel.from_pretrained(mismatched_base, expert_dir)
        except ValueError as error:
            lines = str(error).splitlines()
            print(f"mismatched layout refused: ValueError: {lines[0]}")
            print("\n".join(lines[1:4]))
        else:
            raise SystemExit("the mismatched model accepted the expert")


if __name__ == "__main__":
    main()
