"""One expert, end to end: train on a task's even half, keep the best validation checkpoint, test against the base.

This is the small-batch recipe measured on the embedded SmolLM2-135M (docs/trainer.md): the command line
(``python -m peft_svf.trainer``, ``peft-svf train``) and the main job call it, so an expert trained by one
is the same as an expert trained by the others.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftConfig
from transformers import TrainerCallback

from ..defaults import ROLLOUT_TEMPERATURE  # the rollout temperature, shared with the CLI
from ..paths import EXPERT_DIR, RESULTS_FILE, write_json
from ..precision import fast_bf16, mixed_precision_args
from ..svf import SVFConfig
from ..svf.merging import merged_for_inference
from ..tasks import Task, evaluate, train_valid_split
from ..tasks.classification import TASK_IDENTIFICATION
from .config import SVFTrainingConfig, resolve_renamed
from .trainer import SVFTrainer

# Each adapter kind's learning rate under this recipe (16 prompts a step, temperature 0.7). SVF: the probe of
# rl-pitfalls-measured; LoRA r=16: chosen on validation from 1e-4..1e-2 in the three offline domains
# (docs/trainer.md, 2026-12-05: 3e-4 best in math and reasoning, 3e-3 in code, 1e-2 diverges).
RECIPE_LEARNING_RATES = {"svf": 1e-2, "lora": 3e-4}
# Where validation chose another rate for a task of the offline suite (docs/trainer.md, 2026-12-05): SVF on math
# at 5e-3 escapes the `a + b` local optimum that 1e-2 locks one seed in three into; reasoning learns too slowly
# at 5e-3 in 30 steps.
TASK_LEARNING_RATES = {("svf", "offline_math"): 5e-3, ("lora", "offline_code"): 3e-3}


def recipe_learning_rate(adapter: str, task_name: str, lr: float | None = None) -> float:
    """The rate ``train_expert`` trains at: ``lr`` when given, else the task's validated one, else the adapter
    kind's. The main job asks first, to record the rate an expert was trained at."""
    if lr is not None:
        return lr
    return TASK_LEARNING_RATES.get((adapter, task_name), RECIPE_LEARNING_RATES[adapter])


# Each kind's KL coefficient to the base model. SVF: 0.1, chosen on validation over five seeds per domain
# (docs/trainer.md, 2026-12-06): the same mean best validation in math, +5.6 points in reasoning, +4.7 on three
# code seeds, and higher worst seeds in math and reasoning (the term keeps a run from locking into an early local
# optimum). LoRA's rates were chosen without the term.
RECIPE_BETAS = {"svf": 0.1, "lora": 0.0}


def recipe_beta(adapter: str, beta: float | None = None) -> float:
    """The KL coefficient ``train_expert`` trains with: ``beta`` when given, else the adapter kind's."""
    return RECIPE_BETAS[adapter] if beta is None else beta


# Seeds probed to the first validation, where validation chose more than one (docs/trainer.md, 2026-12-07): SVF
# on code, whose weak seeds show at step 10 and stay weak under the KL term; with rollouts stopped at the closed
# block, a third probe lifted the worst of five seeds from 63% to 76% on test. Reasoning, once its rollouts stopped
# after the first number: mean best validation 84.8% with one seed, 88.8% with three (its weak seed 70% -> 90%).
# The classification expert z_c (2026-12-08): writing its answer itself, 6 of 9 seeds locked into naming "math" for
# every question (validation 33% at step 10 and after); with the answer's start prefilled, 5 of 9, so three probes
# still leave about 17% where all three lock (about 30% before), each probe at about 2/3 of the cost.
TASK_CANDIDATES = {("svf", "offline_code"): 3, ("svf", "offline_reasoning"): 3, ("svf", TASK_IDENTIFICATION): 3}


def recipe_candidates(
    adapter: str, task_name: str, candidates: int | None = None, *, steps: int, eval_steps: int
) -> int:
    """The seeds ``train_expert`` probes: ``candidates`` when given, else the task's validated count; one where
    training ends at its first validation (the probe would be the whole run)."""
    if candidates is not None:
        return candidates
    return TASK_CANDIDATES.get((adapter, task_name), 1) if steps > eval_steps else 1


# Tasks whose experts train in bf16 mixed precision where bf16 is faster than float32 (AMX, CUDA), chosen on
# validation over five seeds each (docs/trainer.md, 2026-12-07). Reasoning: mean best validation 93.2% against
# 88.8% in float32, worst seed 88% against 82%. Code: every seed's best validation 76% (float32: 76-84%, mean
# 77.6%, within one standard error), the same worst seed, and 0.8x the training time. Math stays float32: the same
# mean (73.6%) with a far wider spread (60-90% against 64-80%). Elsewhere the numerics (and so the experts) are
# float32's.
TASK_BF16 = {("svf", "offline_code"), ("svf", "offline_reasoning")}


def recipe_bf16(adapter: str, task_name: str, bf16: bool | None = None) -> bool:
    """Whether ``train_expert`` trains in bf16 mixed precision: ``bf16`` when given, else where the task's
    recipe chose it and bf16 is faster than float32 here (:func:`~peft_svf.precision.fast_bf16`)."""
    if bf16 is not None:
        return bf16
    return (adapter, task_name) in TASK_BF16 and fast_bf16()


def adapter_config(kind: str, init_noise_std: float = 0.01) -> PeftConfig:
    """SVF on the per-architecture default targets, or the paper's LoRA baseline (r=16, attention)."""
    if kind == "svf":
        return SVFConfig(init_noise_std=init_noise_std)
    if kind == "lora":
        return LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
    raise ValueError(f"unknown adapter kind {kind!r}; use 'svf' or 'lora'")


# Candidate k of seed s trains with seed s + k * CANDIDATE_SEED_STRIDE: distinct from every other seed's.
CANDIDATE_SEED_STRIDE = 1000
CANDIDATES_DIR = "candidates"


class StopAfterStep(TrainerCallback):
    """Ends training after ``step`` (its evaluation and checkpoint are still written): a candidate's probe."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


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
    num_generations: int = 1,
    advantage_baseline: str = "batch_mean",
    candidates: int | None = None,
    lr: float | None = None,
    beta: float | None = None,
    temperature: float = ROLLOUT_TEMPERATURE,
    max_new_tokens: int | None = None,
    eval_steps: int = 10,
    valid_n: int = 50,
    test_n: int = 200,
    test_batch_size: int = 50,
    seed: int = 0,
    evaluate_base: bool = True,
    progress: bool = True,
    kl_coef: float | None = None,
    bf16: bool | None = None,
) -> dict[str, Any]:
    """Train an adapter on ``task`` and return (and write to ``results.json``) base vs expert test accuracy.

    ``model`` is a plain causal LM; it comes back carrying the trained adapter (PEFT injects in place).
    ``train_dataset`` and ``valid_dataset`` replace the task's even and odd halves (a user's own prompts).
    The adapter is saved under ``output_dir/expert``. ``test_n=0`` skips the test evaluation.
    ``test_batch_size``: test prompts per ``generate`` call (decoding on a CPU costs per step more than per row:
    100 items of the offline tasks in two calls of 50 took 0.6-0.7x the time of 16 per call, the same verdicts).

    ``candidates > 1`` starts that many runs (seeds ``seed + k * CANDIDATE_SEED_STRIDE``) and trains each for
    ``eval_steps`` steps; the one with the best validation accuracy then resumes from its checkpoint and
    finishes, exactly as if it had run alone. Whether a run will end up weak shows at its first
    validation (docs/trainer.md), so this spends ``(candidates - 1) * eval_steps`` steps to avoid one.
    ``candidates=None`` takes the recipe's count for the adapter kind and task (:func:`recipe_candidates`).
    ``lr=None`` takes the recipe's rate for the adapter kind and task (:func:`recipe_learning_rate`): LoRA at
    SVF's 1e-2 diverges, and SVF on ``offline_math`` is steadier at 5e-3.
    ``beta=None`` takes the recipe's KL coefficient for the adapter kind (:func:`recipe_beta`).
    ``kl_coef`` is the deprecated name of ``beta`` (TRL's), accepted until the next release.
    ``bf16=True`` trains (rollouts, updates, validation) in mixed precision (``TrainingArguments.bf16``, on the
    CPU too); the test evaluation stays in the model's own dtype, and the saved expert is the same kind of file.
    ``bf16=None`` takes the recipe's choice for the task on this machine (:func:`recipe_bf16`).
    """
    beta = resolve_renamed("kl_coef", kl_coef, "beta", beta, None)
    peft_config = adapter_config(adapter)  # an unknown kind fails here, before any work
    lr = recipe_learning_rate(adapter, task.name, lr)
    beta = recipe_beta(adapter, beta)
    bf16 = recipe_bf16(adapter, task.name, bf16)
    candidates = recipe_candidates(adapter, task.name, candidates, steps=steps, eval_steps=eval_steps)
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if candidates > 1 and steps <= eval_steps:
        raise ValueError(
            f"candidates are compared at their first validation (step {eval_steps}); steps={steps} leaves "
            "nothing to train after it"
        )
    output_dir = Path(output_dir)
    max_new_tokens = max_new_tokens or task.max_new_tokens
    pool = task.load("train") if train_dataset is None or valid_dataset is None else None
    valid = valid_dataset if valid_dataset is not None else train_valid_split(pool, "valid")
    valid = valid.select(range(min(valid_n, len(valid))))
    train = train_dataset if train_dataset is not None else train_valid_split(pool, "train")
    if len(train) == 0:
        raise ValueError(f"the training set for task {task.name!r} is empty")

    def make_trainer(model: Any, run_seed: int, run_dir: Path, callbacks: list | None = None) -> SVFTrainer:
        return SVFTrainer(
            model,
            task.reward,
            args=SVFTrainingConfig(
                output_dir=str(run_dir),
                per_device_train_batch_size=batch,
                num_generations=num_generations,
                advantage_baseline=advantage_baseline,
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
                seed=run_seed,
                disable_tqdm=not progress,
                **mixed_precision_args(bf16),
            ),
            train_dataset=train,
            eval_dataset=valid,
            processing_class=tokenizer,
            peft_config=copy.deepcopy(peft_config),  # PEFT fills in a config it is given
            callbacks=callbacks,
        )

    settings = dict(adapter=adapter, steps=steps, batch=batch, num_generations=num_generations,
                    advantage_baseline=advantage_baseline, candidates=candidates, lr=lr, beta=beta,
                    temperature=temperature, max_new_tokens=max_new_tokens, eval_steps=eval_steps,
                    valid_n=valid_n, seed=seed, **({"bf16": True} if bf16 else {}))  # fmt: skip
    results: dict[str, Any] = {"task": task.name, "domain": task.domain, "settings": settings}
    run_seed, run_dir, resume, probe_wall = seed, output_dir, None, 0.0
    if candidates > 1:
        start = time.time()
        probes = []
        for k in range(candidates):
            probe_seed = seed + k * CANDIDATE_SEED_STRIDE
            probe_dir = output_dir / CANDIDATES_DIR / f"seed-{probe_seed}"
            probe = make_trainer(copy.deepcopy(model), probe_seed, probe_dir, [StopAfterStep(eval_steps)])
            probe.train()
            accuracy = next(log["eval_accuracy"] for log in probe.state.log_history if "eval_accuracy" in log)
            probes.append({"seed": probe_seed, "valid_accuracy": accuracy})
            del probe
        chosen = max(probes, key=lambda p: p["valid_accuracy"])  # the first of equals
        results["candidates"] = probes
        results["chosen_seed"] = run_seed = chosen["seed"]
        run_dir = output_dir / CANDIDATES_DIR / f"seed-{run_seed}"
        resume = str(run_dir / f"checkpoint-{eval_steps}")
        probe_wall = time.time() - start
    trainer = make_trainer(model, run_seed, run_dir)
    results["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    def test(which: str) -> None:
        """``<which>_test_accuracy`` and, for confidence intervals over items, ``<which>_test_items`` (0/1)."""
        result = evaluate(trainer.model, task, tokenizer, split="test", n=test_n, batch_size=test_batch_size,
                          max_new_tokens=max_new_tokens, progress=progress)  # fmt: skip
        results[f"{which}_test_accuracy"] = result.accuracy
        results[f"{which}_test_items"] = [int(record["correct"]) for record in result.records]

    if evaluate_base and test_n:
        with trainer.model.disable_adapter():
            test("base")
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    results["train_wall_s"] = round(probe_wall + time.time() - start, 1)
    results["best_checkpoint"] = trainer.state.best_model_checkpoint
    results["valid_accuracy_by_step"] = {
        log["step"]: log["eval_accuracy"] for log in trainer.state.log_history if "eval_accuracy" in log
    }
    results["log_history"] = trainer.state.log_history
    trainer.model.eval()
    if test_n:
        results["test_n"] = min(test_n, len(task.load("test")))
        # Merged, the expert answers at the base model's cost per token: 1.26-1.57x faster than SVF's factored
        # forward on 32 items of the offline tasks, the same completions (benchmarks/expert_test_merged.py), but
        # slower on a few items, where building the weights does not pay: worth_merging decides, from the
        # completions' tokens. The original weight tensors come back after.
        tokens = results["test_n"] * max_new_tokens
        with torch.no_grad(), merged_for_inference(trainer.model, tokens=tokens):
            test("expert")
    trainer.save_model(str(output_dir / EXPERT_DIR))
    write_json(output_dir / RESULTS_FILE, results)
    return results
