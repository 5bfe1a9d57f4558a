"""Where an SVFTrainer step goes: rollout, log-prob forward/backward and KL, for SVF and LoRA in one run.

Each variant trains the same prompts with the same loop, batch and seeded sampling. The learning rate is
~0 so that every variant keeps generating exactly the base model's completions: the same tokens are
timed everywhere and the comparison is of compute, not of what each adapter learned to say. Times are
medians over the steps of all rounds (the first step of each round, a warm-up, is dropped); rounds run
the variants round-robin so that machine noise hits them alike. Prints a table and writes JSON.

    python benchmarks/trainer_step_breakdown.py                    # embedded SmolLM2, 8 prompts x 32 tokens
    OMP_NUM_THREADS=1 python benchmarks/trainer_step_breakdown.py --batch 8 --max-new-tokens 16 --steps 3 --rounds 2
    python benchmarks/trainer_step_breakdown.py --batch 16 --max-new-tokens 64 --steps 6 --rounds 3
    python benchmarks/trainer_step_breakdown.py --task task_id --batch 16 --max-new-tokens 32 --beta 0 \\
        --variants "SVF, whole prompts" SVF                        # z_c's rows: the shared prompt prefix
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig

from peft_svf import SVFConfig
from peft_svf.embedded import load_embedded_model
from peft_svf.pipeline.config import DEFAULT_EXPERT_TASKS
from peft_svf.precision import mixed_precision_args
from peft_svf.tasks import get_task
from peft_svf.tasks.classification import build_task_id_dataset, task_id_reward
from peft_svf.tasks.rewards import reward_name
from peft_svf.trainer import SVFTrainer, SVFTrainingConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the paper's LoRA comparison: attention, r=16
VARIANTS: dict[str, tuple[Any, dict[str, Any]]] = {
    # name: (adapter config factory, SVFTrainingConfig settings that differ from the defaults)
    "SVF": (lambda: SVFConfig(init_noise_std=0.01), {}),
    "SVF, unmerged rollouts": (lambda: SVFConfig(init_noise_std=0.01), {"merge_adapter_for_generation": False}),
    # What "auto" chose in training before it could drop W x (2026-12-06): a recomposed weight on every layer.
    "SVF, recompose": (lambda: SVFConfig(init_noise_std=0.01, forward_mode="recompose"), {}),
    # W freed: the forward is U diag(s') V^T x alone, no W x plus a change (docs/svf.md, "keep_base_weight").
    "SVF, W freed": (lambda: SVFConfig(init_noise_std=0.01, keep_base_weight=False), {}),
    # Every row runs its whole prompt, as before the trainer shared a common prompt prefix (2026-12-07).
    "SVF, whole prompts": (lambda: SVFConfig(init_noise_std=0.01), {"share_prompt_prefix": False}),
    "LoRA r=16 attn": (
        lambda: LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS),
        {},
    ),
    # On SVF's own targets (every linear layer but the head: SmolLM2's 210 matrices), the fairer cost comparison
    # issue 14 names beside the paper's attention-only LoRA.
    "LoRA r=16 all-linear": (
        lambda: LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
        {},
    ),
}
# The task-identification rows z_c trains on: ~180 tokens of classification instructions, then the question.
TASK_ID = "task_id"
PARTS = ("rollout", "logprob_fwd_bwd", "kl", "step")


def never_flat(reward):
    """``reward`` plus a tiny offset per row, so that a batch's rewards are never all equal: at this benchmark's
    learning rate of ~0 the base model's rewards often are, and SVFTrainer skips the update of such a batch when
    ``beta`` is 0 (its gradient is exactly zero). Keeps the reward's name and where it stops reading."""

    def offset(completions, **columns):
        return [value + 1e-3 * row for row, value in enumerate(reward(completions, **columns))]

    offset.__name__ = reward_name(reward)
    if hasattr(reward, "completion_done"):
        offset.completion_done = reward.completion_done
    return offset


def run_variant(
    base, tokenizer, name: str, data, reward, args: argparse.Namespace, workdir: str
) -> list[dict]:
    """Train ``args.steps`` steps of one variant; per-step seconds of each part (warm-up step dropped)."""
    make_config, settings = VARIANTS[name]
    trainer = SVFTrainer(
        copy.deepcopy(base),
        never_flat(reward),
        args=SVFTrainingConfig(
            output_dir=workdir,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            max_steps=args.steps,
            learning_rate=1e-12,
            max_completion_length=args.max_new_tokens,
            beta=args.beta,
            **settings,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
            **mixed_precision_args(args.bf16),
        ),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=make_config(),
    )
    trainer.train()
    rows = []
    for log in trainer.state.log_history[1:]:
        if "rollout_time" not in log:
            continue
        rows.append(
            {
                "rollout": log["rollout_time"],
                "logprob_fwd_bwd": log["update_time"] - log["kl_time"],
                "kl": log["kl_time"],
                "step": log["rollout_time"] + log["update_time"],
                "completion_tokens": log["completions/mean_length"] * args.batch,
                "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="offline_math", help=f"a task's train split, or {TASK_ID!r} (z_c's rows)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round (first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (TrainingArguments.bf16), as train_expert(bf16=True)")
    parser.add_argument("--output", type=Path, default=Path("trainer_step_breakdown.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base, tokenizer = load_embedded_model()
    n_prompts = args.batch * args.steps
    if args.task == TASK_ID:
        per_task = -(-n_prompts // len(DEFAULT_EXPERT_TASKS))
        data = build_task_id_dataset(DEFAULT_EXPERT_TASKS, n_per_task=per_task)
        data, reward = data.shuffle(seed=0).select(range(n_prompts)), task_id_reward()
    else:
        task = get_task(args.task)
        data, reward = task.load("train").select(range(n_prompts)), task.reward
    results: dict[str, list[dict]] = {name: [] for name in args.variants}
    started = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            for name in args.variants:
                results[name] += run_variant(base, tokenizer, name, data, reward, args, workdir)

    reference_name = "LoRA r=16 attn" if "LoRA r=16 attn" in results else args.variants[0]
    reference = statistics.median(r["step"] for r in results[reference_name])
    summary = {}
    for name, rows in results.items():
        medians = {part: statistics.median(r[part] for r in rows) for part in PARTS}
        summary[name] = {
            **{f"{part}_s": value for part, value in medians.items()},
            **{f"{part}_share": medians[part] / medians["step"] for part in PARTS[:3]},
            "step_vs_reference": medians["step"] / reference,
            "completion_tokens_per_step": statistics.median(r["completion_tokens"] for r in rows),
            "trainable_parameters": rows[0]["trainable"],
            "steps_measured": len(rows),
        }

    header = f"{'variant':<24}{'params':>10}{'rollout s':>11}{'fwd/bwd s':>11}{'KL s':>8}{'step s':>9}{'vs ref':>9}{'tokens':>8}"
    print(header)
    for name, s in summary.items():
        print(
            f"{name:<24}{s['trainable_parameters']:>10,}{s['rollout_s']:>11.3f}{s['logprob_fwd_bwd_s']:>11.3f}"
            f"{s['kl_s']:>8.3f}{s['step_s']:>9.3f}{s['step_vs_reference']:>9.2f}{s['completion_tokens_per_step']:>8.0f}"
        )
    for name, s in summary.items():
        shares = ", ".join(f"{part} {100 * s[f'{part}_share']:.0f}%" for part in PARTS[:3])
        print(f"{name}: {shares}")
    print(f"vs ref: each variant's step over {reference_name}'s")
    report = {
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "torch_threads": torch.get_num_threads()},
        "reference": reference_name,
        "summary": summary,
        "per_step": results,
        "wall_s": time.time() - started,
    }
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
