"""Training arguments for :class:`~peft_svf.trainer.SVFTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

AdvantageBaseline = Literal["none", "batch_mean", "group_mean", "leave_one_out"]
LossAggregation = Literal["sequence_sum", "token_mean"]


@dataclass
class SVFTrainingConfig(TrainingArguments):
    """``TrainingArguments`` plus the REINFORCE-with-KL options of Transformer² (paper eq. 1, appendix A).

    Optimisation defaults follow the paper's Table 6: AdamW (the Trainer default), learning rate 2e-3
    with cosine decay, gradient clipping at max-norm 1e-3, and a global batch of 256 prompts reached as
    8 per device x 32 accumulation steps. At small batches (tens of prompts) a larger learning rate
    (5e-3 to 1e-2) is what learns in the step budget; see ``docs/trainer.md``.
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
    kl_coef: float = field(
        default=0.1,
        metadata={
            "help": "λ of eq. (1): weight of KL(π_adapted || π_base). The paper swept 0.0, 0.1, 0.2, 0.3."
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
    scale_advantages: bool = field(
        default=False,
        metadata={
            "help": "Divide advantages by the batch reward std (with 'batch_mean': per-batch z-score)."
        },
    )
    merge_adapter_for_generation: bool = field(
        default=True,
        metadata={
            "help": "Merge the adapter into the weights for rollouts (base-model speed), unmerge after. Each "
            "merge/unmerge leaves float rounding (about 1e-7 relative) in the base weights; False generates "
            "through the adapter's own forward instead, slower but bit-for-bit reproducible across resumes."
        },
    )
    loss_aggregation: LossAggregation = field(
        default="sequence_sum",
        metadata={
            "help": "'sequence_sum': log π(y|x) summed over completion tokens, as in the paper and REINFORCE; "
            "'token_mean': averaged per token within each completion."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
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
