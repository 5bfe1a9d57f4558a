"""What the main job runs, in two sizes: ``quick`` (a smoke run, minutes) and ``full`` (the measured run)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defaults import CLASSIFIER_TEMPERATURE, ROLLOUT_TEMPERATURE

if TYPE_CHECKING:
    from ..tasks import Task

# The offline suite: one training task per expert domain, and the unseen tasks Table 2 is measured on.
DEFAULT_EXPERT_TASKS = {"math": "offline_math", "code": "offline_code", "reasoning": "offline_reasoning"}
DEFAULT_UNSEEN_TASKS = ("offline_math_unseen", "offline_code_unseen", "offline_reasoning_unseen")


@dataclass
class PipelineConfig:
    """Sizes of every stage. Expert settings are checked before reusing an expert found in ``output_dir``."""

    output_dir: Path = Path("outputs/transformer2")
    model: str | None = None  # a Hub id or path; None: the embedded SmolLM2-135M-Instruct
    expert_tasks: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EXPERT_TASKS))
    unseen_tasks: tuple[str, ...] = DEFAULT_UNSEEN_TASKS
    seed: int = 0
    # several seeds (run_seeds): one job per seed in output_dir/seed-<s>/, then mean ± sd and 95% CIs in
    # output_dir/report/; empty: one job with ``seed``
    seeds: tuple[int, ...] = ()
    # experts (the small-batch recipe of docs/trainer.md)
    expert_steps: int = 30
    expert_batch: int = 16
    # None: the recipe's rate for each expert's task (trainer.recipe.recipe_learning_rate)
    expert_lr: float | None = None
    # None: the recipe's KL coefficient (trainer.recipe.recipe_beta)
    expert_beta: float | None = None
    expert_temperature: float = ROLLOUT_TEMPERATURE
    # seeds probed to the first validation, the best one finished; None: the recipe's count for each expert's task
    # (trainer.recipe.recipe_candidates)
    expert_candidates: int | None = None
    expert_eval_steps: int = 10
    expert_valid_n: int = 50
    expert_test_n: int = 100  # each expert on its own task's test split, base beside it (Table 1 layout)
    # classification expert (strategy B)
    classifier_steps: int = 20
    classifier_batch: int = 16
    classifier_temperature: float = CLASSIFIER_TEMPERATURE
    classifier_eval_steps: int = 10
    classifier_valid_n: int = 30
    # unseen-task evaluation and few-shot CEM (strategy C)
    unseen_n: int = 60
    # prompts per generate call: decoding on a CPU costs per step, so one call for all 60 items is faster than
    # four of 16 (benchmarks/eval_batch_size.py)
    unseen_batch_size: int = 64
    cem_shots: int = 3
    cem_population: int = 32
    cem_generations: int = 3
    cem_elite_ratio: float = 0.2
    # caps every task's token budget (training, tests, unseen tasks, CEM); None: each task's own. A smoke run's cap:
    # decoding is most of its time, and its figures measure nothing
    max_new_tokens: int | None = None
    # bf16 mixed precision in training (train_expert(bf16=...)); the experts' tests stay float32. None: each
    # expert's recipe (trainer.recipe.recipe_bf16: code and reasoning, where bf16 is faster than float32: AMX,
    # CUDA), z_c in float32; True / False: every expert and z_c
    bf16: bool | None = None
    # the unseen tasks (Table 2: every method, dispatch and CEM included) in bf16 mixed precision
    # (precision.inference_in); None: where bf16 is faster than float32 (precision.fast_bf16; docs/main-job.md)
    unseen_bf16: bool | None = None

    def task(self, name: str) -> Task:
        """The registered task, its token budget capped at ``max_new_tokens``."""
        from ..tasks import get_task  # not at import: ``--help`` loads no datasets

        task = get_task(name)
        if self.max_new_tokens is None or task.max_new_tokens <= self.max_new_tokens:
            return task
        return replace(task, max_new_tokens=self.max_new_tokens)

    def expert_settings(
        self, lr: float, beta: float, candidates: int, stops_at_answer: bool, bf16: bool = False
    ) -> dict[str, Any]:
        """The settings an expert was trained with (``lr``, ``candidates``, ``bf16``: its task's; ``beta``: the
        resolved KL coefficient); a stored expert is reused only when they match. ``stops_at_answer``: its
        rollouts end where the task's reward stops reading (recorded only then, as ``bf16``, so that experts
        trained before 2026-12-07, when rollouts started to stop and bf16 came, are still reused)."""
        settings = dict(steps=self.expert_steps, batch=self.expert_batch, lr=lr, beta=beta,
                        temperature=self.expert_temperature, candidates=candidates,
                        eval_steps=self.expert_eval_steps,
                        valid_n=self.expert_valid_n, seed=self.seed)  # fmt: skip
        if self.max_new_tokens is not None:
            settings["max_new_tokens"] = self.max_new_tokens
        settings.update({"bf16": True} if bf16 else {})
        return {**settings, "stops_at_answer": True} if stops_at_answer else settings

    def classifier_settings(self, candidates: int) -> dict[str, Any]:
        """The settings z_c was trained with (``candidates``: the recipe's probes); reused only when they match,
        so a z_c trained before its answers started prefilled (2026-12-08) is trained again."""
        from ..tasks.classification import ASSISTANT_PREFIX  # not at import: ``--help`` loads no datasets

        return dict(steps=self.classifier_steps, batch=self.classifier_batch, seed=self.seed, candidates=candidates,
                    temperature=self.classifier_temperature, eval_steps=self.classifier_eval_steps,
                    valid_n=self.classifier_valid_n, assistant_prefix=ASSISTANT_PREFIX,
                    experts=sorted(self.expert_tasks.items()),
                    **({"bf16": True} if self.bf16 else {}))  # fmt: skip

    def unseen_in_bf16(self) -> bool:
        """Whether the unseen tasks are scored in bf16 mixed precision (``unseen_bf16``, resolved)."""
        from ..precision import fast_bf16  # not at import: ``--help`` loads no torch

        return fast_bf16() if self.unseen_bf16 is None else self.unseen_bf16

    def to_dict(self) -> dict[str, Any]:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        # as run, so that a job scored in the other precision is not read back as this one's seed
        config["unseen_bf16"] = self.unseen_in_bf16()
        if not self.seeds:  # a single-seed job's results.json keeps the keys it had before --seeds
            del config["seeds"]
        if self.bf16 is None:  # the recipe's precision: the keys the job had before the setting came
            del config["bf16"]
        return config


FULL = PipelineConfig()
QUICK = replace(
    FULL,
    output_dir=Path("outputs/transformer2-quick"),
    expert_steps=2,
    expert_batch=4,
    expert_eval_steps=2,
    expert_valid_n=4,
    expert_test_n=8,
    classifier_steps=2,
    classifier_batch=4,
    classifier_eval_steps=2,
    classifier_valid_n=3,
    unseen_n=8,
    cem_shots=2,
    cem_population=4,
    cem_generations=1,
    max_new_tokens=24,
)


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    """The main job's flags; here, beside the presets, so that ``--help`` imports nothing heavy."""
    parser = argparse.ArgumentParser(
        prog="peft-svf run",
        description="The whole Transformer² loop on the embedded model and the offline tasks.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every stage (under 5 minutes on 2 cores)"
    )
    parser.add_argument("--output-dir", type=Path, default=None,
                        help=f"default: {QUICK.output_dir} with --quick, else {FULL.output_dir}; experts there are reused")  # fmt: skip
    parser.add_argument(
        "--model", default=None, help="Hub id or path of the base model; default: the embedded SmolLM2"
    )
    seed = parser.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=0, help="the seed of a single job (default 0)")
    seed.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                      help="several seeds: one job each in OUTPUT_DIR/seed-<s>/, then OUTPUT_DIR/report/ "
                      "with mean ± sd over seeds and 95%% bootstrap CIs")  # fmt: skip
    parser.add_argument("--unseen-n", type=int, default=None, help="test items per unseen task")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="train every expert and z_c in bf16 mixed precision, or none (default: each "
                        "expert's recipe: code and reasoning in bf16 where it is faster than float32: AMX, CUDA)")  # fmt: skip
    parser.add_argument("--unseen-bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="score the unseen tasks (Table 2) in bf16 mixed precision, or in float32 (default: "
                        "bf16 where it is faster than float32: AMX, CUDA)")  # fmt: skip
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    changes: dict[str, Any] = {"model": args.model, "seed": args.seed}
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            parser.error(f"--seeds: each seed once, got {args.seeds}")
        changes["seeds"] = tuple(args.seeds)
    if args.output_dir is not None:
        changes["output_dir"] = args.output_dir
    if args.unseen_n is not None:
        changes["unseen_n"] = args.unseen_n
    if args.bf16 is not None:
        changes["bf16"] = args.bf16
    if args.unseen_bf16 is not None:
        changes["unseen_bf16"] = args.unseen_bf16
    return replace(config, **changes)
