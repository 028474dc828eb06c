"""GRPO (Shao et al. 2024, DeepSeekMath) for LLM recommenders, through the env API.

Per request a group of n rollouts y_1..y_n with rewards r_i. Advantages are group-relative,

    A_i = (r_i - mean(r)) / (std(r) + eps)            (std over the group, unbiased as in TRL)

and every token t of y_i gets A_i. With rho_t = pi(y_t | x, y_<t) / pi_old(y_t | x, y_<t),

    l_t = -min(rho_t * A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_t
    KL_t = exp(q_t) - q_t - 1,   q_t = log pi_ref - log pi         (the k3 estimator)

and the loss aggregates l_t over tokens as named in the literature:

* ``grpo``: mean over each sequence's tokens, then over sequences (the original paper and ReRe;
  the default);
* ``dapo``: one mean over all tokens of the batch (DAPO, Yu et al. 2025);
* ``dr_grpo``: sum over all tokens / (B * T_max), with T_max the longest item in the tree
  (Dr. GRPO, Liu et al. 2025; it also drops the std, ``scale_rewards=False``).

Defaults follow the original GRPO and ReRe: per-sequence mean and a small k3 KL to the frozen SFT
reference (beta = 1e-3, ReRe's value). Log-probs are the policy's objective (full vocabulary by
default). Asymmetric clipping (``clip_high > clip_low``) is DAPO's clip-higher. Token weights w_t
(RISER's certainty mask) multiply l_t; the aggregation still divides by token counts.

Under ``torchrun`` the counts are the global minibatch's (:func:`agents.parallel.distributed.global_sum`
inside ``loss_sync``): each rank's loss is its share of the global loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.learners.base import Learner, RLBatch, check_rollout_settings, group_advantages, masked_mean
from agents.model.policy import LLMPolicy, Rollout
from agents.parallel import distributed as dist

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


@dataclass
class GRPOConfig:
    """GRPO settings.

    Args:
        group_size: n, rollouts per request.
        rollout: ``sample`` (constrained sampling through the env) or ``beam`` (the group is the top
            n items of one constrained beam search, in beam order, as ReRe and MiniOneRec roll out).
        temperature: sampling temperature (the update uses the same one).
        top_k: sample among the k most likely allowed tokens (None: all; sampled rollouts only).
        reward: the env reward to train on (``hit``, ``ranking``: ReRe's, ``rank_discounted``;
            :mod:`recgym.rewards`); None: the env's own.
        clip_low: eps_low, the ratio clip below 1 (0.2).
        clip_high: eps_high, the ratio clip above 1 (DAPO's clip-higher: 0.28).
        beta: weight of the k3 KL to the frozen reference policy (1e-3 as ReRe; 0: no reference
            model is kept).
        loss_type: ``grpo`` (default), ``dapo`` or ``dr_grpo`` (module docstring).
        scale_rewards: divide advantages by the group's std (False for Dr. GRPO).
        eps: added to the std.
        full_vocab: override the policy's objective in the update (True: whole vocabulary, False:
            renormalised over the allowed tokens; None: the policy's, full by default).
    """

    group_size: int = 16
    rollout: str = "sample"
    temperature: float = 1.0
    top_k: int | None = None
    reward: str | None = None
    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 1e-3
    loss_type: str = "grpo"
    scale_rewards: bool = True
    eps: float = 1e-4
    full_vocab: bool | None = None

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: choose one of {LOSS_TYPES}")
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size}: GRPO needs at least 2 rollouts per request")
        check_rollout_settings(self)


def clipped_token_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip per token: -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), and where the clip acted.

    ``advantages`` is (B,) or (B, T); returns ``(loss [B, T], clipped [B, T] bool)``.

    Example:
        >>> loss, clipped = clipped_token_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1),
        ...                                    torch.tensor([2.0]), 0.2, 0.2)
        >>> round(loss.item(), 4), clipped.item()   # rho = 1.5 clipped to 1.2: -1.2 * 2
        (-2.4, True)
    """
    a = advantages[:, None] if advantages.dim() == 1 else advantages
    rho = torch.exp(logp - old_logp)  # rho_t
    unclipped = rho * a
    clipped = torch.clamp(rho, 1 - clip_low, 1 + clip_high) * a
    return -torch.min(unclipped, clipped), clipped < unclipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL_t = exp(q) - q - 1 with q = log pi_ref - log pi (Schulman's k3: unbiased, >= 0).

    Example:
        >>> round(k3_kl(torch.tensor(0.0), torch.log(torch.tensor(0.5))).item(), 4)
        0.1931
    """
    q = ref_logp - logp
    return torch.exp(q) - q - 1


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_len: int) -> torch.Tensor:
    """Reduce per-token losses (B, T) over the real tokens ``mask`` as ``grpo``/``dapo``/``dr_grpo``.

    Inside :func:`agents.parallel.distributed.loss_sync` the sequence and token counts are the global batch's
    (every rank's rows), so the ranks' results sum to the global batch's loss.

    Example:
        >>> l = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
        >>> m = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
        >>> [round(aggregate(l, m, t, 3).item(), 4) for t in ("grpo", "dapo", "dr_grpo")]
        [2.5, 1.75, 1.1667]
    """
    masked = token_loss * mask
    if loss_type == "grpo":
        per_sequence = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        if not dist.syncing():
            return per_sequence.mean()
        return per_sequence.sum() / dist.global_sum(mask.shape[0])
    if loss_type == "dapo":
        return masked.sum() / dist.global_sum(mask.sum()).clamp(min=1)
    if loss_type == "dr_grpo":
        return masked.sum() / (dist.global_sum(mask.shape[0]) * max_len)
    raise ValueError(f"unknown loss_type {loss_type!r}: choose one of {LOSS_TYPES}")


class GRPO(Learner):
    """Group Relative Policy Optimization over the RecGen vector env.

    Example:
        >>> learner = GRPO(GRPOConfig(group_size=8, clip_high=0.28))
        >>> learner.rollouts_per_request
        8
    """

    name = "grpo"
    config: GRPOConfig
    config_class = GRPOConfig

    def __init__(self, config: GRPOConfig | None = None) -> None:
        self.config = config or GRPOConfig()

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.config.beta > 0  # the KL term needs pi_ref

    def make_batch(self, policy: LLMPolicy, rollout: Rollout) -> RLBatch:
        """Group advantages of a plain n-rollout group."""
        return self.batch_from_rollout(policy, rollout, np.arange(len(rollout.rows)), self.config.group_size)

    def batch_from_rollout(self, policy: LLMPolicy, rollout: Rollout, select: np.ndarray, n: int) -> RLBatch:
        """An :class:`RLBatch` of rollout rows ``select`` (groups of n consecutive rows) with A_i."""
        c = self.config
        batch = RLBatch.from_rollout(policy, rollout, select, n)
        batch.advantages = group_advantages(batch.rewards, n, scale=c.scale_rewards, eps=c.eps)
        return batch

    def policy_loss(
        self, policy: LLMPolicy, batch: RLBatch, logp: torch.Tensor, weights: torch.Tensor | None = None,
        extra: torch.Tensor | None = None, clip: bool = True,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The GRPO objective on the batch's tokens, with optional token weights w_t and extra l_t terms.

        ``clip=False`` uses the unclipped surrogate -A_i * rho_t on every token (KL-Cov's form).
        """
        c = self.config
        mask = batch.mask
        old = batch.old_logp if batch.old_logp is not None else logp.detach()
        if clip:
            token_loss, clipped = clipped_token_loss(logp, old, batch.advantages, c.clip_low, c.clip_high)
        else:
            token_loss = -batch.advantages[:, None] * torch.exp(logp - old)  # -A_i * rho_t
            clipped = torch.zeros_like(mask)
        stats: dict[str, float] = {}
        if c.beta > 0:
            if batch.ref_logp is None:
                raise ValueError("beta > 0 needs the reference policy's log-probs (batch.ref_logp)")
            kl = k3_kl(logp, batch.ref_logp)
            token_loss = token_loss + c.beta * kl  # beta * KL_t
            stats["kl"] = masked_mean(kl.detach(), mask)
        if extra is not None:
            token_loss = token_loss + extra
        if weights is not None:
            token_loss = token_loss * weights  # w_t
        loss = aggregate(token_loss, mask, c.loss_type, policy.tree.max_depth)
        stats["clip_frac"] = masked_mean(clipped.float(), mask)
        stats["kl_old"] = masked_mean((old - logp).detach(), mask)
        return loss, stats

    def loss(self, policy: LLMPolicy, batch: RLBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logp, entropy = self.loss_logprobs(policy, batch)
        loss, stats = self.policy_loss(policy, batch, logp)
        stats["entropy"] = masked_mean(entropy.detach(), batch.mask)
        return loss, stats


__all__ = ["GRPO", "GRPOConfig", "aggregate", "clipped_token_loss", "k3_kl"]
