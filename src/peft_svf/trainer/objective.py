"""Pure tensor pieces of the REINFORCE-with-KL objective, kept apart from the Trainer so they can be tested alone."""

from __future__ import annotations

import torch

from .config import AdvantageBaseline, LossType, RewardScaling


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """Mask that keeps every token up to and including the first EOS and drops what follows.

    Building it as ``completion_ids != pad`` is wrong when EOS is also the pad token (SmolLM2): the EOS
    would leave the loss and the policy would never be penalised for stopping early.
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    length = completion_ids.size(1)
    first_eos = torch.full((completion_ids.size(0),), length, dtype=torch.long, device=completion_ids.device)
    has_eos = is_eos.any(dim=1)
    first_eos[has_eos] = is_eos.int().argmax(dim=1)[has_eos]
    positions = torch.arange(length, device=completion_ids.device).expand_as(completion_ids)
    return (positions <= first_eos.unsqueeze(1)).long()


def compute_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    baseline: AdvantageBaseline,
    scale_rewards: RewardScaling,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages for a batch whose consecutive blocks of ``num_generations`` rows share a prompt.

    ``scale_rewards`` divides them by the reward std of the whole batch (``"batch"``) or of each prompt's
    group (``"group"``), as TRL's option of that name does.
    """
    if baseline == "none":
        advantages = rewards.clone()
    elif baseline == "batch_mean":
        advantages = rewards - rewards.mean()
    else:
        groups = rewards.view(-1, num_generations)
        if baseline == "group_mean":
            means = groups.mean(dim=1, keepdim=True)
        else:  # leave_one_out: the mean of the other completions of the same prompt
            means = (groups.sum(dim=1, keepdim=True) - groups) / (num_generations - 1)
        advantages = (groups - means).view(-1)
    if scale_rewards == "batch" and rewards.numel() > 1:
        advantages = advantages / (rewards.std() + eps)
    elif scale_rewards == "group":
        stds = rewards.view(-1, num_generations).std(dim=1, keepdim=True)
        advantages = (advantages.view(-1, num_generations) / (stds + eps)).view(-1)
    return advantages


def aggregate_per_sequence(values: torch.Tensor, mask: torch.Tensor, loss_type: LossType) -> torch.Tensor:
    """Per-completion sum (``sequence_sum``) or mean (``grpo``, TRL's per-sequence mean) of a per-token quantity."""
    total = (values * mask).sum(dim=1)
    if loss_type == "sequence_sum":
        return total
    return total / mask.sum(dim=1).clamp(min=1)


def token_kl(logps: torch.Tensor, base_logps: torch.Tensor) -> torch.Tensor:
    """Exact per-token KL(π_adapted || π_base) over the full vocabulary, from two log-softmax tensors."""
    return (logps.exp() * (logps - base_logps)).sum(dim=-1)
