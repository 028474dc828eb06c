"""SimPO (Meng et al. 2024): reference-free preference optimisation with a length-normalised reward.

    r(y) = beta / |y| * log pi(y | x) = beta / |y| * sum_t log pi(y_t | x, y_<t)
    L    = -log sigmoid(r(y_w) - r(y_l) - gamma)

For recommendation the chosen item y_w is the one the user really chose next (the ground truth) and
each rejected y_l is a distinct item the policy produced that missed: sampled through the env
(``rollout="sample"``) or the top beam items (``rollout="beam"``, as ReRe draws negatives).
Optional token weights w_t (RISER's certainty mask) make the sum sum_t w_t log pi(y_t | ...);
|y| stays the token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from agents.learners.base import (
    Learner,
    RLBatch,
    check_rollout_settings,
    first_in_group,
    masked_mean,
)
from agents.model.policy import LLMPolicy, Rollout
from agents.parallel import distributed as dist


@dataclass
class SimPOConfig:
    """SimPO settings. ``beta`` and ``gamma`` are our defaults (the SimPO paper tunes beta in
    [2, 2.5] and gamma / beta around 0.5); RISER leaves them open.

    Args:
        group_size: items drawn per request to find rejected ones.
        rollout: ``sample`` (constrained sampling through the env) or ``beam`` (top items of a
            constrained beam search of width ``group_size``).
        beta: SimPO's reward scale.
        gamma: SimPO's target margin between chosen and rejected.
        temperature: sampling temperature (the update uses the same one).
        top_k: sample among the k most likely allowed tokens (None: all; sampled rollouts only).
        reward: the env reward (None: the env's); SimPO reads only the hits.
        full_vocab: override the policy's objective (None: the policy's, full vocabulary by default).
    """

    group_size: int = 16
    rollout: str = "sample"
    beta: float = 2.0
    gamma: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    reward: str | None = None
    full_vocab: bool | None = None

    def __post_init__(self) -> None:
        check_rollout_settings(self)


def length_normalized_reward(
    logp: torch.Tensor, mask: torch.Tensor, beta: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """r(y) = beta / |y| * sum_t w_t log pi(y_t | x, y_<t) per row of (N, T) token log-probs.

    Example:
        >>> length_normalized_reward(torch.tensor([[-1.0, -3.0]]), torch.tensor([[True, True]]), 2.0)
        tensor([-4.])
    """
    terms = logp * mask if weights is None else logp * weights * mask
    return beta * terms.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def simpo_loss(
    chosen_reward: torch.Tensor, rejected_reward: torch.Tensor, gamma: float, pairs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of -log sigmoid(r(y_w) - r(y_l) - gamma) over pairs, and the margins r(y_w) - r(y_l).

    ``pairs`` divides the sum instead of the number of pairs given (the global batch's pair count
    under ``torchrun``, of which these pairs are one rank's share).

    Example:
        >>> loss, margin = simpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), 1.0)
        >>> round(loss.item(), 4), margin.tolist()   # -log sigmoid(1)
        (0.3133, [2.0])
    """
    margin = chosen_reward - rejected_reward
    terms = -F.logsigmoid(margin - gamma)
    return (terms.mean() if pairs is None or pairs == len(terms) else terms.sum() / pairs), margin


def preference_loss(
    batch: RLBatch, logp: torch.Tensor, chosen_logp: torch.Tensor, chosen_mask: torch.Tensor,
    chosen_groups: torch.Tensor, rejected: torch.Tensor, beta: float, gamma: float,
    weights: torch.Tensor | None = None, chosen_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SimPO over pairs (chosen item of group g, each rejected response of group g).

    ``chosen_logp`` (C, Tc) are the chosen items of groups ``chosen_groups`` (C,); ``rejected``
    (B,) flags the batch's rejected responses (their groups must be among ``chosen_groups``).
    Inside :func:`agents.parallel.distributed.loss_sync` the mean is over the global batch's pairs (every rank
    must call it, with or without pairs of its own).

    Example:
        >>> # loss, stats = preference_loss(batch, logp, chosen_logp, chosen >= 0, groups, rejected, 2.0, 1.0)
    """
    r_w = length_normalized_reward(chosen_logp, chosen_mask, beta, chosen_weights)  # (C,)
    r_l = length_normalized_reward(logp, batch.mask, beta, weights)  # (B,)
    slot = torch.full((batch.num_groups,), -1, dtype=torch.long, device=logp.device)
    slot[chosen_groups] = torch.arange(len(chosen_groups), device=logp.device)
    pair_rows = torch.nonzero(rejected).squeeze(1)
    pairs = dist.global_sum(len(pair_rows))  # the global batch's pairs (this rank's outside loss_sync)
    if len(pair_rows) == 0:
        return logp.sum() * 0.0, {"simpo_loss": 0.0, "simpo_margin": 0.0, "simpo_pairs": 0.0}
    loss, margin = simpo_loss(r_w[slot[batch.group_index[pair_rows]]], r_l[pair_rows], gamma, pairs)
    return loss, {"simpo_loss": float(loss.detach()), "simpo_margin": float(margin.detach().mean()),
                  "simpo_pairs": float(len(pair_rows))}


class SimPO(Learner):
    """Standalone SimPO: the ground-truth item against every distinct missed item of a request.

    Example:
        >>> SimPO(SimPOConfig(rollout="beam", group_size=10)).rollouts_per_request
        10
    """

    name = "simpo"
    needs_old_logprobs = False
    config: SimPOConfig
    config_class = SimPOConfig

    def __init__(self, config: SimPOConfig | None = None) -> None:
        self.config = config or SimPOConfig()

    def make_batch(self, policy: LLMPolicy, rollout: Rollout) -> RLBatch:
        n = rollout.group_size
        return RLBatch.from_rollout(policy, rollout, np.arange(len(rollout.rows)), n)

    def loss(self, policy: LLMPolicy, batch: RLBatch) -> tuple[torch.Tensor, dict[str, float]]:
        groups = torch.arange(batch.num_groups, device=batch.responses.device)
        logp, entropy = self.logprobs(policy, batch, extra=batch.chosen, extra_index=groups)
        b, t = batch.responses.shape
        chosen_mask = batch.chosen >= 0
        rejected = ~batch.hits & first_in_group(batch.terminal, batch.group_index)
        loss, stats = preference_loss(batch, logp[:b, :t], logp[b:, :batch.chosen.shape[1]], chosen_mask,
                                      groups, rejected, self.config.beta, self.config.gamma)
        stats["entropy"] = masked_mean(entropy[:b, :t].detach(), batch.mask)
        return loss, stats


__all__ = ["SimPO", "SimPOConfig", "length_normalized_reward",
           "preference_loss", "simpo_loss"]
