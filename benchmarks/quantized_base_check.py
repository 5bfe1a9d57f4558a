"""SVF on a bitsandbytes 4-bit base: identity error and forward/backward time versus the 4-bit base.

Builds a Llama with random weights (Llama-3-8B layer shapes by default), quantises its decoder linears to
NF4, attaches SVF and measures. Prints a table and writes JSON.

    python benchmarks/quantized_base_check.py --device cuda --layers 2
    python benchmarks/quantized_base_check.py --device cpu --hidden 256 --intermediate 768 --layers 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bitsandbytes as bnb
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_svf import SVFConfig


def quantize_decoder_linears(model: LlamaForCausalLM, compute_dtype: torch.dtype, device: str) -> None:
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        quantized = bnb.nn.Linear4bit(
            module.in_features, module.out_features, bias=False, compute_dtype=compute_dtype, quant_type="nf4"
        )
        quantized.weight = bnb.nn.Params4bit(module.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, quantized.to(device))


def timed(fn, device: str, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/quantized_base_check.json")
    args = parser.parse_args()

    compute_dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 128),
        num_key_value_heads=max(1, args.hidden // 512),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(compute_dtype)
    quantize_decoder_linears(model, compute_dtype, args.device)
    model.to(args.device)
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=args.device)

    with torch.no_grad():
        base_logits = model(batch).logits.float()
    base_time = timed(lambda: model(batch), args.device, args.repeats)

    start = time.perf_counter()
    peft_model = get_peft_model(model, SVFConfig())
    attach_s = time.perf_counter() - start
    with torch.no_grad():
        identity_error = (peft_model(batch).logits.float() - base_logits).abs().max().item()
        svf_forward_time = timed(lambda: peft_model(batch), args.device, args.repeats)

    def train_step():
        peft_model(input_ids=batch, labels=batch).loss.backward()
        peft_model.zero_grad(set_to_none=True)

    svf_train_time = timed(train_step, args.device, args.repeats)
    result = {
        "args": vars(args),
        "identity_max_abs_logit_error": identity_error,
        "attach_seconds": attach_s,
        "base_forward_s": base_time,
        "svf_forward_s": svf_forward_time,
        "svf_forward_ratio": svf_forward_time / base_time,
        "svf_forward_backward_s": svf_train_time,
        "trainable_parameters": peft_model.get_nb_trainable_parameters()[0],
    }
    if args.device.startswith("cuda"):
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    for key, value in result.items():
        if key != "args":
            print(f"{key:<32}{value:.6g}" if isinstance(value, float) else f"{key:<32}{value}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
