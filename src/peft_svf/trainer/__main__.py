"""Train one expert on a registered task and compare it with the base model on the task's test split.

    python -m peft_svf.trainer --task offline_math                   # SVF expert on the embedded SmolLM2
    python -m peft_svf.trainer --task offline_math --adapter lora    # LoRA r=16 on attention, same loop

The train and validation sets are the authors' even/odd split of the task's training pool; the best
checkpoint by validation accuracy is kept (the paper's early stopping). Writes ``results.json`` (base and
expert test accuracy, n, seed, wall time, trainable parameters) and the adapter under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig

from ..svf import SVFConfig
from ..tasks import evaluate, get_task, train_valid_split
from .config import SVFTrainingConfig
from .trainer import SVFTrainer


def adapter_config(kind: str, seed_noise: float) -> PeftConfig:
    """SVF on the per-architecture default targets, or the paper's LoRA baseline (r=16, attention)."""
    if kind == "svf":
        return SVFConfig(init_noise_std=seed_noise)
    return LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--model", default=None, help="model path; default: the embedded SmolLM2-135M-Instruct"
    )
    parser.add_argument("--adapter", choices=["svf", "lora"], default="svf")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--kl-coef", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's budget")
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--valid-n", type=int, default=100)
    parser.add_argument("--test-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-base-eval", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.model is None:
        from ..embedded import load_embedded_model

        model, tokenizer = load_embedded_model()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    task = get_task(args.task)
    max_new_tokens = args.max_new_tokens or task.max_new_tokens
    output_dir = args.output_dir or Path(f"experts/{args.task}-{args.adapter}-seed{args.seed}")
    pool = task.load("train")
    valid = train_valid_split(pool, "valid")
    valid = valid.select(range(min(args.valid_n, len(valid))))

    trainer = SVFTrainer(
        model,
        task.reward,
        args=SVFTrainingConfig(
            output_dir=str(output_dir),
            per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=32,
            gradient_accumulation_steps=1,
            learning_rate=args.lr,
            max_steps=args.steps,
            kl_coef=args.kl_coef,
            max_completion_length=max_new_tokens,
            eval_strategy="steps",
            eval_steps=args.eval_steps,
            save_strategy="steps",
            save_steps=args.eval_steps,
            save_total_limit=2,
            load_best_model_at_end=True,
            report_to=[],
            seed=args.seed,
        ),
        train_dataset=train_valid_split(pool, "train"),
        eval_dataset=valid,
        processing_class=tokenizer,
        peft_config=adapter_config(args.adapter, 0.01),
    )
    results: dict[str, Any] = {
        "task": args.task,
        "adapter": args.adapter,
        "seed": args.seed,
        "settings": vars(args),
    }
    results["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if not args.skip_base_eval:
        with trainer.model.disable_adapter():
            base = evaluate(
                trainer.model, task, tokenizer, split="test", n=args.test_n, max_new_tokens=max_new_tokens
            )
        results["base_test_accuracy"] = base.accuracy
    start = time.time()
    trainer.train()
    results["train_wall_s"] = round(time.time() - start, 1)
    results["best_checkpoint"] = trainer.state.best_model_checkpoint
    results["valid_accuracy_by_step"] = {
        log["step"]: log["eval_accuracy"] for log in trainer.state.log_history if "eval_accuracy" in log
    }
    trainer.model.eval()
    with torch.no_grad():
        expert = evaluate(
            trainer.model, task, tokenizer, split="test", n=args.test_n, max_new_tokens=max_new_tokens
        )
    results.update(expert_test_accuracy=expert.accuracy, test_n=expert.n)
    trainer.save_model(str(output_dir / "expert"))
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
