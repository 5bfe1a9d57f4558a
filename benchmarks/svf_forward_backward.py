"""Forward+backward time and memory of SVF versus the frozen base and LoRA, in one run.

Prints a table and writes JSON. Times are medians over round-robin repeats (so machine noise hits every
variant alike) and are reported as ratios to the frozen base. The frozen base still back-propagates to
its inputs, which is what any adapter's backward must at least do.

    python benchmarks/svf_forward_backward.py                       # embedded SmolLM2, 8 x 256 tokens
    python benchmarks/svf_forward_backward.py --model llama3-8b --layers 4 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_svf import SVFConfig
from peft_svf.svf.layer import SVFLayer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

VARIANTS = {
    "frozen base": None,
    "SVF auto": {"forward_mode": "auto"},
    "SVF recompose": {"forward_mode": "recompose"},
    "SVF factored": {"forward_mode": "factored"},
    "SVF auto, W freed": {"forward_mode": "auto", "keep_base_weight": False},
    "LoRA r=16": "lora",
}


def build_base(name: str, layers: int | None, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    if name == "embedded":
        from peft_svf.embedded import load_embedded_model

        model, _ = load_embedded_model(dtype=dtype)
        return model.to(device)
    if name != "llama3-8b":
        raise SystemExit(f"unknown --model {name!r}")
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers or 32,
        num_attention_heads=32,
        num_key_value_heads=8,
    )
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype)  # random weights: shapes are what is measured


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def targeted_weight_bytes(model) -> int:
    return tensor_bytes(m.weight for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in TARGETS)


def build_variant(base, spec):
    model = copy.deepcopy(base)
    if spec is None:
        model.requires_grad_(False)
        model.enable_input_require_grads()  # backward still flows through the activations
        return model
    if spec == "lora":
        config = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0)
    else:
        config = SVFConfig(target_modules=TARGETS, init_noise_std=0.01, **spec)
    return get_peft_model(model, config)


def extra_resident_bytes(model, base_bytes: int) -> int:
    """Bytes held by the adapted model beyond the base model's parameters."""
    params = {p.data_ptr(): p for p in model.parameters()}
    buffers = {b.data_ptr(): b for m in model.modules() if isinstance(m, SVFLayer) for b in m.buffers(False)}
    return tensor_bytes(params.values()) + tensor_bytes(buffers.values()) - base_bytes


def step(model, batch) -> None:
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="'embedded' or 'llama3-8b' (random weights)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers for llama3-8b shapes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--output", default="benchmarks/results/svf_forward_backward.json")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    base = build_base(args.model, args.layers, dtype, args.device)
    base_bytes = tensor_bytes(base.parameters())
    target_bytes = targeted_weight_bytes(base)
    batch = torch.randint(0, base.config.vocab_size, (args.batch, args.seq), device=args.device)

    models, build_seconds, extra, peak = {}, {}, {}, {}
    for name in args.variants:
        start = time.perf_counter()
        models[name] = build_variant(base, VARIANTS[name])
        build_seconds[name] = time.perf_counter() - start
        extra[name] = 0 if VARIANTS[name] is None else extra_resident_bytes(models[name], base_bytes)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        step(models[name], batch)  # warm-up
        synchronize(args.device)
        if args.device.startswith("cuda"):
            peak[name] = torch.cuda.max_memory_allocated() - before

    times: dict[str, list[float]] = {name: [] for name in args.variants}
    for _ in range(args.repeats):
        for name in args.variants:
            synchronize(args.device)
            start = time.perf_counter()
            step(models[name], batch)
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)

    reference = statistics.median(times[args.variants[0]])
    rows = []
    for name in args.variants:
        median = statistics.median(times[name])
        rows.append(
            {
                "variant": name,
                "median_s": median,
                "time_ratio": median / reference,
                "extra_resident_mb": extra[name] / 2**20,
                "extra_vs_targeted_weights": extra[name] / target_bytes,
                "peak_step_mb": peak[name] / 2**20 if name in peak else None,
                "build_s": build_seconds[name],
            }
        )
    print(
        f"model={args.model} layers={base.config.num_hidden_layers} batch={args.batch}x{args.seq} "
        f"device={args.device} dtype={args.dtype} repeats={args.repeats} "
        f"targeted weights={target_bytes / 2**20:.1f} MB"
    )
    header = (
        f"{'variant':<20}{'median s':>10}{'x base':>8}{'extra MB':>10}{'x targeted W':>14}{'peak MB':>10}"
    )
    print(header)
    for r in rows:
        peak_text = f"{r['peak_step_mb']:.0f}" if r["peak_step_mb"] is not None else "-"
        print(
            f"{r['variant']:<20}{r['median_s']:>10.3f}{r['time_ratio']:>8.2f}{r['extra_resident_mb']:>10.1f}"
            f"{r['extra_vs_targeted_weights']:>14.2f}{peak_text:>10}"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
