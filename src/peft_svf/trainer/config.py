"""Training arguments for :class:`~peft_svf.trainer.SVFTrainer`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

AdvantageBaseline = Literal["none", "batch_mean", "group_mean", "leave_one_out"]
RewardScaling = Literal["none", "batch", "group"]
LossType = Literal["sequence_sum", "grpo"]

# The names of the first release, accepted until the next one: old name -> (TRL's name, old value -> new value).
DEPRECATED_NAMES: dict[str, tuple[str, dict[Any, Any]]] = {
    "kl_coef": ("beta", {}),
    "scale_advantages": ("scale_rewards", {True: "batch", False: "none"}),
    "loss_aggregation": ("loss_type", {"sequence_sum": "sequence_sum", "token_mean": "grpo"}),
}


@dataclass
class SVFTrainingConfig(TrainingArguments):
    """``TrainingArguments`` plus the REINFORCE-with-KL options of Transformer² (paper eq. 1, appendix A).

    Optimisation defaults follow the paper's Table 6: AdamW (the Trainer default), learning rate 2e-3
    with cosine decay, gradient clipping at max-norm 1e-3, and a global batch of 256 prompts reached as
    8 per device x 32 accumulation steps. At small batches (tens of prompts) a larger learning rate
    (5e-3 to 1e-2) is what learns in the step budget; see ``docs/trainer.md``.

    ``beta``, ``scale_rewards`` and ``loss_type`` are TRL's ``GRPOConfig`` names with TRL's meanings;
    ``loss_type="sequence_sum"`` (the paper's REINFORCE, the default) and ``advantage_baseline`` have no TRL
    equivalent. The first release's ``kl_coef``, ``scale_advantages`` and ``loss_aggregation`` still work,
    with a ``FutureWarning``, until the next release.
    """

    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate (paper: 2e-3)."})
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata={"help": "Learning-rate schedule (paper: cosine decay)."}
    )
    max_grad_norm: float = field(default=1e-3, metadata={"help": "Gradient clipping max-norm (paper: 1e-3)."})
    gradient_accumulation_steps: int = field(
        default=32,
        metadata={
            "help": "Accumulation steps; 32 x 8 prompts per device gives the paper's global batch of 256."
        },
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every optimizer step."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep every dataset column: columns besides `prompt` are passed to the reward functions."
        },
    )
    metric_for_best_model: str | None = field(
        default="accuracy",
        metadata={
            "help": "Validation metric for `load_best_model_at_end` (paper: early stopping on accuracy)."
        },
    )

    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` is a string."
        },
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Prompts longer than this are truncated from the left; None keeps them."},
    )
    max_completion_length: int = field(default=256, metadata={"help": "Maximum new tokens per completion."})
    num_generations: int = field(
        default=1, metadata={"help": "Completions sampled per prompt; group baselines need at least 2."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for rollouts."})
    top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling threshold for rollouts (1.0 = off)."}
    )
    top_k: int = field(default=0, metadata={"help": "Top-k filtering for rollouts (0 = off)."})
    beta: float = field(
        default=0.1,
        metadata={
            "help": "KL coefficient, λ of eq. (1): weight of KL(π_adapted || π_base); 0 skips the base forward. "
            "The paper swept 0.0, 0.1, 0.2, 0.3."
        },
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function; the reward is the weighted sum."}
    )
    reward_clip: float | None = field(
        default=None,
        metadata={"help": "Clip the summed reward to [-reward_clip, reward_clip] before the baseline."},
    )
    advantage_baseline: AdvantageBaseline = field(
        default="batch_mean",
        metadata={
            "help": "Baseline subtracted from the rewards: 'none' (the paper's raw ±1), 'batch_mean', "
            "'group_mean' (GRPO) or 'leave_one_out' (RLOO); group baselines need num_generations >= 2."
        },
    )
    scale_rewards: RewardScaling = field(
        default="none",
        metadata={
            "help": "Divide the advantages by a reward std, as TRL does: 'none', 'batch' (the std over the batch; "
            "with 'batch_mean' the paper's per-batch z-score) or 'group' (the std over each prompt's "
            "completions, needs num_generations >= 2). True means 'group' and False 'none', as in TRL."
        },
    )
    merge_adapter_for_generation: bool = field(
        default=True,
        metadata={
            "help": "Merge the adapter into the weights for rollouts (base-model speed); the original weight "
            "tensors are put back after, so nothing is rounded. False generates through the adapter's own "
            "forward instead (slower); weights that cannot be merged exactly (quantised, tied) always do."
        },
    )
    share_prompt_prefix: bool = field(
        default=True,
        metadata={
            "help": "When a batch's prompts start with the same tokens (at least 16: shared instructions, a chat "
            "template's system text), run them once per rollout, update and KL forward and reuse their KV cache "
            "for every row. Exact up to float rounding; off under gradient checkpointing, which drops caches."
        },
    )
    stop_when_rewards_done: bool = field(
        default=True,
        metadata={
            "help": "End a completion once every reward function declares it complete (its `completion_done`: "
            "`code_reward` reads the first code block only, so it is done when that block closes). The text "
            "after it could not change a reward; it is neither generated nor trained on."
        },
    )
    loss_type: LossType = field(
        default="sequence_sum",
        metadata={
            "help": "'sequence_sum': log π(y|x) summed over completion tokens, as in the paper and REINFORCE; "
            "'grpo': averaged per token within each completion, then over completions, as TRL's 'grpo'."
        },
    )
    kl_coef: float | None = field(
        default=None, metadata={"help": "Deprecated: use `beta` (removed in the next release)."}
    )
    scale_advantages: bool | None = field(
        default=None,
        metadata={"help": "Deprecated: use `scale_rewards` ('batch' for True; removed in the next release)."},
    )
    loss_aggregation: str | None = field(
        default=None,
        metadata={
            "help": "Deprecated: use `loss_type` ('grpo' for 'token_mean'; removed in the next release)."
        },
    )

    def __post_init__(self) -> None:
        self._apply_deprecated_names()
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        super().__post_init__()
        if self.scale_rewards not in ("none", "batch", "group"):
            raise ValueError(f"scale_rewards must be 'none', 'batch' or 'group', got {self.scale_rewards!r}.")
        if self.loss_type not in ("sequence_sum", "grpo"):
            raise ValueError(f"loss_type must be 'sequence_sum' or 'grpo', got {self.loss_type!r}.")
        if self.scale_rewards == "group" and self.num_generations < 2:
            raise ValueError(
                "scale_rewards='group' divides by the std of each prompt's completions and needs "
                f"num_generations >= 2 (got {self.num_generations})."
            )
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}.")
        if self.advantage_baseline in ("group_mean", "leave_one_out") and self.num_generations < 2:
            raise ValueError(
                f"advantage_baseline={self.advantage_baseline!r} compares completions of the same prompt and "
                f"needs num_generations >= 2 (got {self.num_generations})."
            )
        if self.reward_clip is not None and self.reward_clip <= 0:
            raise ValueError(f"reward_clip must be positive, got {self.reward_clip}.")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be positive, got {self.temperature}; greedy rollouts give no exploration."
            )

    def _apply_deprecated_names(self) -> None:
        """Move each first-release name's value onto TRL's name, then clear it.

        Clearing lets ``dataclasses.replace`` and a saved config round-trip without tripping the both-set check.
        """
        defaults = {f.name: f.default for f in fields(self)}
        for old, (new, values) in DEPRECATED_NAMES.items():
            value = getattr(self, new)
            resolved = resolve_renamed(
                old, getattr(self, old), new, value, defaults[new], values, stacklevel=5
            )
            setattr(self, new, resolved)
            setattr(self, old, None)


def resolve_renamed(
    old: str,
    old_value: Any,
    new: str,
    new_value: Any,
    new_default: Any,
    values: Mapping[Any, Any] | None = None,
    stacklevel: int = 3,
) -> Any:
    """``new``'s value, or ``old``'s (translated by ``values``) with a ``FutureWarning`` when only ``old`` is set.

    "Set" means not None for ``old`` and away from its default for ``new``: a value equal to the default
    cannot be told apart from no value once parsed (``HfArgumentParser`` passes every field).
    """
    if old_value is None:
        return new_value
    if new_value != new_default:
        raise ValueError(f"`{old}` is the deprecated name of `{new}`; set only `{new}`.")
    if values and old_value not in values:
        raise ValueError(f"{old}={old_value!r} is not one of {list(values)}; set `{new}` instead.")
    mapped = values.get(old_value, old_value) if values else old_value
    warnings.warn(
        f"`{old}` is deprecated and will be removed in the next release; use `{new}={mapped!r}` instead.",
        FutureWarning,
        stacklevel=stacklevel,
    )
    return mapped
