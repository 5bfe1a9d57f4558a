"""What two-pass self-adaptive inference costs on the embedded SmolLM2-135M-Instruct (paper Table 3, appendix D).

    OMP_NUM_THREADS=1 python benchmarks/two_pass_overhead.py [--quick]
    python benchmarks/two_pass_overhead.py --random-weights DIR --device cuda --dtype bfloat16   # on a GPU

Three experts with random vectors (``init_noise_std``; speed does not depend on what they learned) and a
batch of prompts from the unseen offline tasks. Measures, greedy, every completion forced to its full
length:

1. pass 1 (prompt and soft dispatch) and building the mixtures, as fractions of pass 2, for 64 and 256
   new tokens (the paper's Table 3 reports pass 1 at 13%-47% of pass 2);
2. pass-2 throughput against plain base-model ``generate`` on the same prompts, for one expert shared by
   all rows (weights merged for the call, or not), per-row experts (exact, and each row's change at a few
   low ranks, ``per_row_rank``), and per-row soft mixtures (exact and low rank);
3. one CEM generation: the whole population in one batched ``generate`` against member by member.

``--random-weights DIR`` builds the model from ``DIR``'s ``config.json`` and tokenizer with random
weights (timing does not depend on them, and no weights need to travel to a GPU machine).

Prints a table and writes JSON to ``benchmarks/results/two_pass_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import get_peft_model

from peft_svf import SVFConfig
from peft_svf.adaptive import DispatchDecision, SelfAdaptiveModel, evaluate_population, temporary_mixtures
from peft_svf.adaptive.generation import routed_generate
from peft_svf.prompts import render
from peft_svf.svf.merging import merged_for_inference
from peft_svf.tasks import OFFLINE_UNSEEN_TASKS, get_task

EXPERTS = ["math", "code", "reasoning"]
RESULTS = Path(__file__).parent / "results" / "two_pass_overhead.json"


def timed(fn: Any) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, value


def best_of(repeats: int, fn: Any) -> float:
    return min(timed(fn)[0] for _ in range(repeats))


def base_model(random_weights: Path | None, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The embedded SmolLM2, or a model of the same shape with random weights."""
    if random_weights is None:
        from peft_svf.embedded import load_embedded_model

        model, tokenizer = load_embedded_model()
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(random_weights))
        tokenizer = AutoTokenizer.from_pretrained(random_weights)
    return model.to(device=device, dtype=dtype), tokenizer


def build(noise: float, random_weights: Path | None, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    model, tokenizer = base_model(random_weights, device, dtype)
    peft_model = None
    for i, name in enumerate(EXPERTS):
        torch.manual_seed(i)
        config = SVFConfig(init_noise_std=noise)
        if peft_model is None:
            peft_model = get_peft_model(model, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
    return peft_model.eval(), tokenizer


def prompts_for(n: int) -> list[Any]:
    """``n`` test prompts, taken in turn from the three unseen tasks."""
    per_task = [get_task(name).load("test")["prompt"] for name in OFFLINE_UNSEEN_TASKS]
    return [per_task[i % 3][i // 3] for i in range(n)]


def encode(tokenizer: Any, prompts: list[Any], device: torch.device) -> dict[str, torch.Tensor]:
    texts = [render(tokenizer, p) for p in prompts]
    return tokenizer(
        texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(device)


def pass_two(
    adaptive_model: SelfAdaptiveModel, decisions: list, enc: dict, tokens: int, merge: Any, rank: int | float | None
) -> tuple[float, float]:
    """(seconds building the mixtures, seconds generating) for these decisions."""
    rows, mixtures = adaptive_model._rows(decisions)
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False,
              "pad_token_id": adaptive_model.tokenizer.pad_token_id}  # fmt: skip
    start = time.perf_counter()
    with temporary_mixtures(adaptive_model.model, mixtures):
        built = time.perf_counter()
        with torch.inference_mode():
            routed_generate(adaptive_model.model, rows, merge=merge, per_row_rank=rank, **enc, **kwargs)
        done = time.perf_counter()
    return built - start, done - built


def overhead(adaptive_models: dict[str, SelfAdaptiveModel], prompts: list, enc: dict, tokens_list: list[int],
             repeats: int, ranks: list[int]) -> tuple[list[dict], dict[str, Any]]:  # fmt: skip
    model, tokenizer = adaptive_models["prompt"].model, adaptive_models["prompt"].tokenizer
    base_kwargs = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    rows, decisions_by = [], {}
    for name, adaptive_model in adaptive_models.items():
        pass_one = best_of(repeats, lambda s=adaptive_model: s.dispatch(prompts))
        decisions_by[name] = (pass_one, adaptive_model.dispatch(prompts))

    def one_hot(label: str) -> DispatchDecision:
        return DispatchDecision(label, {e: float(e == label) for e in EXPERTS})

    per_row = [one_hot(EXPERTS[i % 3]) for i in range(len(prompts))]
    scenarios = {
        "one expert, merged": ([one_hot("math")] * len(prompts), True, None),
        "one expert, unmerged": ([one_hot("math")] * len(prompts), False, None),
        "per-row experts": (per_row, "auto", None),
        **{f"per-row experts, rank {k}": (per_row, "auto", k) for k in ranks},
        "per-row soft mixtures": (decisions_by["soft"][1], "auto", None),
        f"per-row soft mixtures, rank {ranks[0]}": (decisions_by["soft"][1], "auto", ranks[0]),
    }
    for tokens in tokens_list:
        kwargs = {**base_kwargs, "max_new_tokens": tokens, "min_new_tokens": tokens}

        def base(kwargs=kwargs) -> None:
            with torch.inference_mode(), model.disable_adapter():
                model.generate(**enc, **kwargs)

        base_s = best_of(repeats, base)
        for scenario, (decisions, merge, rank) in scenarios.items():
            runs = [
                pass_two(adaptive_models["prompt"], decisions, enc, tokens, merge, rank) for _ in range(repeats)
            ]
            mix_s, gen_s = min(r[0] for r in runs), min(r[1] for r in runs)
            row = {"new_tokens": tokens, "pass2": scenario, "per_row_rank": rank, "base_generate_s": round(base_s, 3),
                   "pass2_s": round(gen_s, 3), "mixing_s": round(mix_s, 4),
                   "throughput_vs_base": round(base_s / gen_s, 3)}  # fmt: skip
            for name, (pass_one, _) in decisions_by.items():
                row[f"pass1_{name}_s"] = round(pass_one, 3)
                row[f"pass1_{name}_fraction"] = round(pass_one / gen_s, 3)
            row["mixing_fraction"] = round(mix_s / gen_s, 4)
            rows.append(row)
            print(json.dumps(row))
    labels = {name: [d.label for d in decisions] for name, (_, decisions) in decisions_by.items()}
    return rows, labels


def merge_seconds(model: Any, repeats: int) -> float:
    """Adding one expert into the dense weights and putting them back: what "merged" pays per call."""

    def merge() -> None:
        with merged_for_inference(model, "math"):
            pass

    return best_of(repeats, merge)


def cem_speed(
    adaptive_model: SelfAdaptiveModel, population: int, shots: int, tokens: int, repeats: int, rank: int
) -> dict[str, Any]:
    task = get_task(OFFLINE_UNSEEN_TASKS[0])
    data = task.load("train").select(range(shots))
    rng = np.random.default_rng(0)
    alphas = [dict(zip(EXPERTS, rng.uniform(0, 1, 3).tolist(), strict=True)) for _ in range(population)]
    kwargs = {"max_new_tokens": tokens}
    batched_s, batched = min(
        (
            timed(lambda: evaluate_population(adaptive_model, alphas, data, task.reward, batched=True, **kwargs))
            for _ in range(repeats)
        ),
        key=lambda r: r[0],
    )
    serial_s, serial = timed(
        lambda: evaluate_population(adaptive_model, alphas, data, task.reward, batched=False, **kwargs)
    )
    low_rank_s, low_rank = timed(
        lambda: evaluate_population(adaptive_model, alphas, data, task.reward, per_row_rank=rank, **kwargs)
    )
    same = [s.accuracy for s in batched] == [s.accuracy for s in serial]
    return {"population": population, "shots": shots, "max_new_tokens": tokens, "batched_s": round(batched_s, 2),
            "member_by_member_s": round(serial_s, 2), "speedup": round(serial_s / batched_s, 2),
            "same_scores": same, "low_rank": rank, "batched_low_rank_s": round(low_rank_s, 2),
            "low_rank_speedup": round(serial_s / low_rank_s, 2),
            "low_rank_same_scores": [s.accuracy for s in low_rank] == [s.accuracy for s in serial]}  # fmt: skip


def table(rows: list[dict], cem: dict) -> str:
    lines = ["| new tokens | pass 2 | pass 1 prompt / pass 2 | pass 1 soft / pass 2 | mixing / pass 2 | "
             "pass 2 throughput vs base |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['new_tokens']} | {r['pass2']} | {r['pass1_prompt_fraction']:.0%} | "
                     f"{r['pass1_soft_fraction']:.0%} | {r['mixing_fraction']:.1%} | {r['throughput_vs_base']:.2f} |")  # fmt: skip
    lines.append("")
    lines.append(f"CEM, one generation of {cem['population']} members x {cem['shots']} shots, "
                 f"{cem['max_new_tokens']} new tokens: batched {cem['batched_s']} s, member by member "
                 f"{cem['member_by_member_s']} s ({cem['speedup']}x), same scores: {cem['same_scores']}; batched "
                 f"with each member's rank-{cem['low_rank']} change {cem['batched_low_rank_s']} s "
                 f"({cem['low_rank_speedup']}x), same scores: {cem['low_rank_same_scores']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--noise", type=float, default=0.05, help="init_noise_std of the random experts")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--random-weights", type=Path, default=None, metavar="DIR",
                        help="config.json + tokenizer of the model to build with random weights")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 128],
                        help="per_row_rank values for the low-rank per-row rows (default: 16 64 128)")  # fmt: skip
    parser.add_argument("--tokens", type=int, nargs="+", default=None,
                        help="new-token counts for pass 2 (default: 64 256; --quick: 16 32)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None, help="best of this many runs (default: 2; --quick: 1)")
    args = parser.parse_args(argv)
    batch, tokens, population, shots, cem_tokens, repeats = (
        (4, [16, 32], 8, 2, 16, 1) if args.quick else (8, [64, 256], 32, 3, 32, 2)
    )
    tokens, repeats = args.tokens or tokens, args.repeats or repeats
    load_start = os.getloadavg()[0]
    model, tokenizer = build(args.noise, args.random_weights, args.device, getattr(torch, args.dtype))
    adaptive_models = {
        name: SelfAdaptiveModel(model, tokenizer, EXPERTS, dispatcher=name) for name in ("prompt", "soft")
    }
    prompts = prompts_for(batch)
    enc = encode(tokenizer, prompts, adaptive_models["prompt"].device)
    rows, labels = overhead(adaptive_models, prompts, enc, tokens, repeats, args.ranks)
    merge_s = merge_seconds(model, repeats)
    print(f"merge: {merge_s:.2f} s")
    cem = cem_speed(adaptive_models["prompt"], population, shots, cem_tokens, 1, args.ranks[0])
    print(json.dumps(cem))
    report = {
        "model": f"SmolLM2-135M-Instruct ({'random weights' if args.random_weights else 'embedded'})",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype, "threads": torch.get_num_threads(),
        "platform": platform.platform(), "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(), "batch": batch, "quick": args.quick, "expert_noise": args.noise,
        "pass1_labels": labels, "merge_s": round(merge_s, 3), "rows": rows, "cem": cem,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(table(rows, cem))
    print(f"(one expert merged into the weights and back: {merge_s:.2f} s, included in the merged pass 2)")
    return report


if __name__ == "__main__":
    main()
