"""One expert, end to end: train on a task's even half, keep the best validation checkpoint, test against the base.

This is the small-batch recipe measured on the embedded SmolLM2-135M (docs/trainer.md): the command line
(``python -m peft_svf.trainer``, ``peft-svf train``) and the main job call it, so an expert trained by one
is the same as an expert trained by the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftConfig

from ..defaults import ROLLOUT_TEMPERATURE  # the rollout temperature, shared with the CLI
from ..paths import EXPERT_DIR, RESULTS_FILE
from ..svf import SVFConfig
from ..tasks import Task, evaluate, train_valid_split
from .config import SVFTrainingConfig, resolve_renamed
from .trainer import SVFTrainer


def adapter_config(kind: str, init_noise_std: float = 0.01) -> PeftConfig:
    """SVF on the per-architecture default targets, or the paper's LoRA baseline (r=16, attention)."""
    if kind == "svf":
        return SVFConfig(init_noise_std=init_noise_std)
    if kind == "lora":
        return LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
    raise ValueError(f"unknown adapter kind {kind!r}; use 'svf' or 'lora'")


def train_expert(
    model: Any,
    tokenizer: Any,
    task: Task,
    output_dir: str | Path,
    *,
    adapter: str = "svf",
    train_dataset: Dataset | None = None,
    valid_dataset: Dataset | None = None,
    steps: int = 40,
    batch: int = 16,
    lr: float = 1e-2,
    beta: float = 0.0,
    temperature: float = ROLLOUT_TEMPERATURE,
    max_new_tokens: int | None = None,
    eval_steps: int = 10,
    valid_n: int = 50,
    test_n: int = 200,
    seed: int = 0,
    evaluate_base: bool = True,
    progress: bool = True,
    kl_coef: float | None = None,
) -> dict[str, Any]:
    """Train an adapter on ``task`` and return (and write to ``results.json``) base vs expert test accuracy.

    ``model`` is a plain causal LM; it comes back carrying the trained adapter (PEFT injects in place).
    ``train_dataset`` and ``valid_dataset`` replace the task's even and odd halves (a user's own prompts).
    The adapter is saved under ``output_dir/expert``. ``test_n=0`` skips the test evaluation.
    ``kl_coef`` is the deprecated name of ``beta`` (TRL's), accepted until the next release.
    """
    beta = resolve_renamed("kl_coef", kl_coef, "beta", beta, 0.0)
    output_dir = Path(output_dir)
    max_new_tokens = max_new_tokens or task.max_new_tokens
    pool = task.load("train") if train_dataset is None or valid_dataset is None else None
    valid = valid_dataset if valid_dataset is not None else train_valid_split(pool, "valid")
    valid = valid.select(range(min(valid_n, len(valid))))
    train = train_dataset if train_dataset is not None else train_valid_split(pool, "train")
    if len(train) == 0:
        raise ValueError(f"the training set for task {task.name!r} is empty")

    trainer = SVFTrainer(
        model,
        task.reward,
        args=SVFTrainingConfig(
            output_dir=str(output_dir),
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=32,
            gradient_accumulation_steps=1,
            learning_rate=lr,
            max_steps=steps,
            beta=beta,
            temperature=temperature,
            max_completion_length=max_new_tokens,
            eval_strategy="steps",
            eval_steps=eval_steps,
            save_strategy="steps",
            save_steps=eval_steps,
            save_total_limit=2,
            load_best_model_at_end=True,
            report_to=[],
            seed=seed,
            disable_tqdm=not progress,
        ),
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        peft_config=adapter_config(adapter),
    )
    settings = dict(adapter=adapter, steps=steps, batch=batch, lr=lr, beta=beta,
                    temperature=temperature, max_new_tokens=max_new_tokens, eval_steps=eval_steps,
                    valid_n=valid_n, seed=seed)  # fmt: skip
    results: dict[str, Any] = {"task": task.name, "domain": task.domain, "settings": settings}
    results["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    def test(which: str) -> None:
        """``<which>_test_accuracy`` and, for confidence intervals over items, ``<which>_test_items`` (0/1)."""
        result = evaluate(trainer.model, task, tokenizer, split="test", n=test_n,
                          max_new_tokens=max_new_tokens, progress=progress)  # fmt: skip
        results[f"{which}_test_accuracy"] = result.accuracy
        results[f"{which}_test_items"] = [int(record["correct"]) for record in result.records]

    if evaluate_base and test_n:
        with trainer.model.disable_adapter():
            test("base")
    start = time.time()
    trainer.train()
    results["train_wall_s"] = round(time.time() - start, 1)
    results["best_checkpoint"] = trainer.state.best_model_checkpoint
    results["valid_accuracy_by_step"] = {
        log["step"]: log["eval_accuracy"] for log in trainer.state.log_history if "eval_accuracy" in log
    }
    results["log_history"] = trainer.state.log_history
    trainer.model.eval()
    if test_n:
        with torch.no_grad():
            test("expert")
        results["test_n"] = min(test_n, len(task.load("test")))
    trainer.save_model(str(output_dir / EXPERT_DIR))
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    return results
