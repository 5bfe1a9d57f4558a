"""Strategy B's classification expert ``z_c``: an SVF expert trained to name a question's task.

As the paper: (question from task k, label k) pairs from the experts' own training sets, the same
REINFORCE recipe as the experts (here the measured small-batch one of :mod:`peft_svf.trainer.recipe`),
reward +1 for the right label in ``\\boxed{}``; the best checkpoint on the experts' validation questions is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..defaults import CLASSIFIER_TEMPERATURE
from ..paths import EXPERT_DIR, RESULTS_FILE, write_json
from ..tasks import Task
from ..tasks.classification import (
    ASSISTANT_PREFIX,
    TASK_IDENTIFICATION,
    build_task_id_dataset,
    task_id_reward,
)
from ..trainer.recipe import train_expert


def train_classification_expert(
    model: Any,
    tokenizer: Any,
    tasks: Mapping[str, str],
    output_dir: str | Path,
    *,
    steps: int = 40,
    batch: int = 16,
    lr: float = 1e-2,
    beta: float = 0.0,
    temperature: float = CLASSIFIER_TEMPERATURE,
    max_new_tokens: int = 32,
    eval_steps: int = 10,
    valid_n: int = 60,
    n_per_task: int | None = None,
    descriptions: Mapping[str, str] | None = None,
    seed: int = 0,
    candidates: int | None = None,
    progress: bool = True,
    kl_coef: float | None = None,
    bf16: bool = False,
    assistant_prefix: str = ASSISTANT_PREFIX,
) -> dict[str, Any]:
    """Train ``z_c`` for ``tasks`` (``{label: task name}``, e.g. ``{"math": "offline_math", ...}``).

    ``model`` is a plain causal LM; it comes back carrying the adapter (PEFT injects in place). Training
    uses ``n_per_task`` questions of each task's train split (all when None); validation ``valid_n``
    questions in all, spread over the tasks' valid splits. The adapter is saved under
    ``output_dir/expert`` (load it with ``SelfAdaptiveModel.from_pretrained(..., classifier=that dir)``);
    returns (and writes to ``results.json``) its ``path``, validation accuracy by step and log history.
    ``candidates``, ``kl_coef`` (the deprecated name of ``beta``) and ``bf16`` (mixed precision) as in
    :func:`~peft_svf.trainer.train_expert`. ``assistant_prefix`` starts every answer, so that a rollout's first
    token is the label (``ClassifierDispatcher`` prefills the same by default): written by the model itself
    (``""``), most runs locked into naming one domain for every question (docs/trainer.md).
    """
    output_dir = Path(output_dir)
    train = build_task_id_dataset(tasks, split="train", n_per_task=n_per_task, seed=seed,
                                  descriptions=descriptions, assistant_prefix=assistant_prefix)  # fmt: skip
    per_task = math.ceil(valid_n / len(tasks))
    valid = build_task_id_dataset(tasks, split="valid", n_per_task=per_task, seed=seed,
                                  descriptions=descriptions, assistant_prefix=assistant_prefix)  # fmt: skip
    valid = valid.select(range(min(valid_n, len(valid))))
    reward = task_id_reward(assistant_prefix=assistant_prefix)
    task = Task(name=TASK_IDENTIFICATION, domain="classification", loader=lambda split: train,
                reward=reward, max_new_tokens=max_new_tokens, splits=("train",))  # fmt: skip
    results = train_expert(
        model, tokenizer, task, output_dir, train_dataset=train, valid_dataset=valid, steps=steps, batch=batch,
        lr=lr, beta=beta, temperature=temperature, max_new_tokens=max_new_tokens, eval_steps=eval_steps,
        valid_n=valid_n, test_n=0, seed=seed, candidates=candidates, evaluate_base=False, progress=progress,
        kl_coef=kl_coef, bf16=bf16,
    )  # fmt: skip
    results.update(
        tasks=dict(tasks), train_rows=len(train), valid_rows=len(valid), path=str(output_dir / EXPERT_DIR)
    )
    results["settings"].update(n_per_task=n_per_task, assistant_prefix=assistant_prefix)
    write_json(output_dir / RESULTS_FILE, results)
    return results
