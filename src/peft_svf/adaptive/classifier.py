"""Strategy B's classification expert ``z_c``: an SVF expert trained to name a question's task.

As the paper: (question from task k, label k) pairs from the experts' own training sets, the same
REINFORCE recipe as the experts (here the measured small-batch one of :mod:`peft_svf.trainer.recipe`),
reward +1 for the right label in ``\\boxed{}``; the best checkpoint on the experts' validation questions is kept.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..tasks.classification import build_task_id_dataset, task_id_reward
from ..trainer.config import SVFTrainingConfig
from ..trainer.recipe import EXPERT_DIR, RESULTS_FILE, adapter_config
from ..trainer.trainer import SVFTrainer


def train_classification_expert(
    model: Any,
    tokenizer: Any,
    tasks: Mapping[str, str],
    output_dir: str | Path,
    *,
    steps: int = 40,
    batch: int = 16,
    lr: float = 1e-2,
    kl_coef: float = 0.0,
    max_new_tokens: int = 32,
    eval_steps: int = 10,
    valid_n: int = 60,
    n_per_task: int | None = None,
    descriptions: Mapping[str, str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``z_c`` for ``tasks`` (``{label: task name}``, e.g. ``{"math": "offline_math", ...}``).

    ``model`` is a plain causal LM; it comes back carrying the adapter (PEFT injects in place). Training
    uses ``n_per_task`` questions of each task's train split (all when None); validation ``valid_n``
    questions in all, spread over the tasks' valid splits. The adapter is saved under
    ``output_dir/expert`` (load it with ``SelfAdaptiveModel.from_pretrained(..., classifier=that dir)``);
    returns (and writes to ``results.json``) its ``path``, validation accuracy by step and log history.
    """
    output_dir = Path(output_dir)
    train = build_task_id_dataset(
        tasks, split="train", n_per_task=n_per_task, seed=seed, descriptions=descriptions
    )
    per_task = math.ceil(valid_n / len(tasks))
    valid = build_task_id_dataset(
        tasks, split="valid", n_per_task=per_task, seed=seed, descriptions=descriptions
    )
    valid = valid.select(range(min(valid_n, len(valid))))
    trainer = SVFTrainer(
        model,
        task_id_reward(),
        args=SVFTrainingConfig(
            output_dir=str(output_dir),
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=32,
            gradient_accumulation_steps=1,
            learning_rate=lr,
            max_steps=steps,
            kl_coef=kl_coef,
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
        peft_config=adapter_config("svf"),
    )
    settings = dict(steps=steps, batch=batch, lr=lr, kl_coef=kl_coef, max_new_tokens=max_new_tokens,
                    eval_steps=eval_steps, valid_n=valid_n, n_per_task=n_per_task, seed=seed)  # fmt: skip
    start = time.time()
    trainer.train()
    path = output_dir / EXPERT_DIR
    trainer.save_model(str(path))
    results: dict[str, Any] = {
        "tasks": dict(tasks),
        "settings": settings,
        "train_rows": len(train),
        "valid_rows": len(valid),
        "train_wall_s": round(time.time() - start, 1),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "valid_accuracy_by_step": {
            log["step"]: log["eval_accuracy"] for log in trainer.state.log_history if "eval_accuracy" in log
        },
        "log_history": trainer.state.log_history,
        "path": str(path),
    }
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    return results
