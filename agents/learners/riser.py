"""RISER (Ding et al. 2026, "Towards Sample-Efficient and Stable RL for LLM-based Recommendation").

GRPO with four additions, each switchable so the paper's ablations are configuration. All four act
in the default configuration: the policy's objective is the LLM's full-vocabulary distribution
(forced tokens have pi < 1 and carry gradient), and ``RLConfig.minibatches = 4`` makes pi move away
from pi_old within a batch of rollouts.

1. **Oversampling with de-duplication**: m rollouts per request (m = 20) form a group of n (n = 16)
   by a rule that never loses a hit (as ReRe's dynamic sampling puts the ground truth in): the
   first sampled copy of the ground-truth item first, then the first copy of each distinct missed
   item in sampling order, then the remaining samples (repeats, further copies of the hit among
   them) in sampling order. So a rare hit is never dropped nor duplicated beyond what was sampled,
   and a repeated hit never displaces a distinct miss. Distinct items per group are logged.
2. **SimPO on failed groups**: a group where every rollout missed has A_i = 0 for all i and teaches
   GRPO nothing; there the ground-truth item y_w is preferred over each distinct failed item y_l:

       L = L_GRPO + w * L_SimPO,   L_SimPO = mean -log sigmoid(r(y_w) - r(y_l) - gamma),
       r(y) = beta / |y| * sum_t w_t log pi(y_t | x, y_<t)

3. **Certainty-aware token mask**: w_t = 1 where token t's prefix-tree node branches (>= 2
   children) and d (= 0.7) where the next token is forced, on the GRPO, KL and SimPO terms alike.
4. **KL-Cov** (Cui et al. 2025, as verl implements it): the surrogate is the unclipped
   -A_i * rho_t on every token, and over the (mini)batch's valid tokens

       Cov_t = (A_t - mean A) * (log pi_t - mean log pi)       (detached)

   the top max(1, int(k * N)) of the N valid tokens by Cov (k = 2e-3; verl's count) get
   coef * |log pi_t - log pi_old,t| added (coef = 1). ``kl_cov_clip=True`` keeps PPO's clipped
   surrogate under the penalty instead.

With ``oversample = group_size``, ``simpo_weight = 0``, ``certainty_d = 1`` and ``kl_cov_k = 0``
RISER is exactly GRPO (a test checks loss and gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.learners.base import RLBatch, first_in_group, masked_mean
from agents.learners.grpo import GRPO, GRPOConfig
from agents.learners.simpo import preference_loss
from agents.model.policy import LLMPolicy, Rollout
from agents.parallel import distributed as dist
from recgym.tree import TorchPrefixTree


@dataclass
class RISERConfig(GRPOConfig):
    """RISER settings (GRPO's, plus the four components). Defaults: the paper's m = 20, n = 16,
    d = 0.7, k = 2e-3, coef = 1; ``simpo_weight`` w = 1, ``simpo_beta`` = 2 and ``simpo_gamma`` = 1
    are our choice (the paper leaves them open).

    Args:
        oversample: m rollouts per request before de-duplication (None or ``group_size``: off).
        simpo_weight: w of the SimPO loss on failed groups (0: off).
        simpo_beta: SimPO's beta, the scale of the length-normalised log-probability reward.
        simpo_gamma: SimPO's gamma, the target margin between chosen and rejected.
        certainty_d: d, the weight of forced tokens (1: mask off).
        kl_cov_k: k, the fraction of tokens KL-Cov penalises (0: off).
        kl_cov_coef: coef of |log pi - log pi_old| on those tokens.
        kl_cov_clip: keep PPO's clipped surrogate under KL-Cov (Cui et al. and verl drop the clip:
            the unclipped -A * rho is the default).
    """

    oversample: int | None = 20
    simpo_weight: float = 1.0
    simpo_beta: float = 2.0
    simpo_gamma: float = 1.0
    certainty_d: float = 0.7
    kl_cov_k: float = 2e-3
    kl_cov_coef: float = 1.0
    kl_cov_clip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.oversample is not None and self.oversample < self.group_size:
            raise ValueError(f"oversample={self.oversample} must be at least group_size={self.group_size}")


def unique_group_selection(
    terminal: np.ndarray, n: int, hits: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows that form groups of n from (R, m) sampled items, never losing a hit.

    Per request: the first copy of the hit (the ground-truth item) first, then the first copy of
    each distinct missed item in sampling order, then the remaining rows in sampling order (repeats:
    further copies of the hit and of missed items). With m >= n there are always n rows; a hit is
    kept whenever one was sampled, is never repeated beyond its sampled count, and its repeats never
    displace a distinct missed item.

    Returns ``(select [R * n] flat row indices, distinct [R] items among the m samples)``.

    Example:
        >>> terminal = np.array([[3, 3, 5, 3], [1, 2, 3, 4], [7, 7, 8, 7]])
        >>> hits = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 1]], dtype=bool)
        >>> select, distinct = unique_group_selection(terminal, 3, hits)
        >>> (select.reshape(3, 3) % 4).tolist(), distinct.tolist()  # row 2: hit 7, miss 8, then a repeat
        ([[0, 2, 1], [3, 0, 1], [0, 2, 1]], [2, 4, 2])
    """
    r, m = terminal.shape
    if n > m:
        raise ValueError(f"group size n={n} needs at least n samples per request, got m={m}")
    hits = np.zeros((r, m), dtype=bool) if hits is None else np.asarray(hits, dtype=bool).reshape(r, m)
    groups = torch.arange(r).repeat_interleave(m)
    is_first = first_in_group(torch.as_tensor(terminal).reshape(-1), groups).reshape(r, m).numpy()
    distinct = is_first.sum(axis=1)
    # Priority per row: 0 = the first copy of a hit, 1 = the first copy of a missed item, 2 = a
    # repeat (of a hit or a miss); a stable sort keeps sampling order within each class.
    priority = np.where(is_first, np.where(hits, 0, 1), 2)
    cols = np.argsort(priority, axis=1, kind="stable")[:, :n]
    return (np.arange(r)[:, None] * m + cols).reshape(-1), distinct


def certainty_weights(
    tables: TorchPrefixTree, states: torch.Tensor, mask: torch.Tensor, d: float
) -> torch.Tensor:
    """w_t = 1 where the token's tree node branches, d where the token is forced; 0 on padding.

    Example:
        >>> from recgym.tree import PrefixTree
        >>> tables = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8).torch_tables("cpu")
        >>> states = torch.tensor([[0, 1, 3]])  # root: 5 or 7; "5": 1 or 2; "5 1": only 0
        >>> certainty_weights(tables, states, torch.ones(1, 3, dtype=torch.bool), 0.7).tolist()
        [[1.0, 1.0, 0.699999988079071]]
    """
    branches = tables.branching(states.clamp(min=0))
    return torch.where(branches, 1.0, d) * mask


def kl_cov_penalty(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, k: float,
    coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-Cov: coef * |log pi - log pi_old| on the top max(1, int(k * N)) of the N valid tokens by Cov_t
    (verl's ``kl_cov`` count: k * N rounded down, at least one).

    Returns ``(penalty [B, T], selected [B, T] bool)``. Inside
    :func:`agents.parallel.distributed.loss_sync` the means, N and the top-k run over the global batch's
    tokens (every rank's, :func:`~agents.parallel.distributed.global_cat`); each rank keeps its own part.

    Example:
        >>> lp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]]); adv = torch.tensor([1.0, -1.0])
        >>> _, sel = kl_cov_penalty(lp, lp, adv, torch.ones(2, 2, dtype=torch.bool), 0.25, 1.0)
        >>> sel.tolist()   # Cov = (A - 0) * (log pi + 2): [[1, -1], [0, 0]]
        [[True, False], [False, False]]
    """
    a_local = advantages[:, None].expand_as(logp)[mask]
    a, offset = dist.global_cat(a_local.detach())  # the global batch's tokens, in rank order
    lp, _ = dist.global_cat(logp.detach()[mask])
    cov = (a - a.mean()) * (lp - lp.mean())  # Cov_t
    count = max(1, int(k * len(cov)))  # the top max(1, floor(k N)) tokens, as verl
    chosen = torch.zeros_like(cov, dtype=torch.bool)
    if len(cov):
        chosen[cov.topk(min(count, len(cov))).indices] = True
    chosen = chosen[offset:offset + len(a_local)]  # this rank's tokens
    selected = torch.zeros_like(mask)
    selected[mask] = chosen
    return coef * (logp - old_logp).abs() * selected, selected


class RISER(GRPO):
    """GRPO + oversampling/de-duplication + SimPO on failed groups + certainty mask + KL-Cov.

    Example:
        >>> learner = RISER(RISERConfig(group_size=8, oversample=12))
        >>> learner.rollouts_per_request
        12
    """

    name = "riser"
    config: RISERConfig
    config_class = RISERConfig

    def __init__(self, config: RISERConfig | None = None) -> None:
        super().__init__(config or RISERConfig())

    @property
    def rollouts_per_request(self) -> int:
        return self.config.oversample or self.config.group_size

    @classmethod
    def budget_settings(cls, rollouts_per_request: int, group_size: int) -> dict[str, int]:
        """m = the budget's rollouts per request, n = its group size.

        Example:
            >>> RISER.budget_settings(20, 16)
            {'group_size': 16, 'oversample': 20}
        """
        return {"group_size": group_size, "oversample": rollouts_per_request}

    def make_batch(self, policy: LLMPolicy, rollout: Rollout) -> RLBatch:
        n, m = self.config.group_size, rollout.group_size
        if m == n:
            return super().make_batch(policy, rollout)
        select, _ = unique_group_selection(rollout.terminal.reshape(-1, m).cpu().numpy(), n,
                                           rollout.hits.reshape(-1, m).cpu().numpy())
        return self.batch_from_rollout(policy, rollout, select, n)

    def _failed_groups(self, batch: RLBatch) -> tuple[torch.Tensor, bool]:
        """The groups where every rollout missed, and whether SimPO trains on them."""
        failed = torch.nonzero(~batch.hits.reshape(batch.num_groups, -1).any(dim=1)).squeeze(1)
        return failed, self.config.simpo_weight > 0 and len(failed) > 0

    def loss_logprobs(self, policy: LLMPolicy, batch: RLBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """One shared-prompt forward of the group's responses, then the failed groups' chosen items."""
        failed, use_simpo = self._failed_groups(batch)
        extra = batch.chosen[failed] if use_simpo else None
        return self.logprobs(policy, batch, extra=extra, extra_index=failed)

    def loss(self, policy: LLMPolicy, batch: RLBatch) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        b, t = batch.responses.shape
        failed, use_simpo = self._failed_groups(batch)
        logp_all, entropy = self.loss_logprobs(policy, batch)
        logp = logp_all[:b, :t]
        weights = None  # w_t
        if c.certainty_d != 1:
            weights = certainty_weights(policy.tables, batch.states, batch.mask, c.certainty_d)
        penalty, stats = None, {}
        if c.kl_cov_k > 0:
            old = batch.old_logp if batch.old_logp is not None else logp.detach()
            penalty, selected = kl_cov_penalty(logp, old, batch.advantages, batch.mask, c.kl_cov_k,
                                               c.kl_cov_coef)
            stats["kl_cov_tokens"] = float(selected.sum())
            stats["kl_cov_abs"] = masked_mean((logp - old).abs().detach(), selected)
        # KL-Cov replaces the clip by its penalty (unclipped -A * rho), unless kl_cov_clip.
        clip = c.kl_cov_k == 0 or c.kl_cov_clip
        loss, grpo_stats = self.policy_loss(policy, batch, logp, weights=weights, extra=penalty, clip=clip)
        stats.update(grpo_stats)
        stats["failed_groups"] = float(len(failed)) / batch.num_groups
        if c.simpo_weight > 0 and not use_simpo:
            dist.global_sum(0)  # no failed group here: still take part in the pair count (loss_sync)
        if use_simpo:
            chosen = batch.chosen[failed]
            chosen_mask = chosen >= 0
            chosen_states = torch.as_tensor(policy.tree.path_states(chosen.cpu().numpy()),
                                            device=chosen.device)
            chosen_weights = (certainty_weights(policy.tables, chosen_states, chosen_mask, c.certainty_d)
                              if weights is not None else None)
            # Rejected: each distinct item of a failed group (all of them missed).
            in_failed = torch.zeros(batch.num_groups, dtype=torch.bool, device=logp.device)
            in_failed[failed] = True
            rejected = in_failed[batch.group_index] & first_in_group(batch.terminal, batch.group_index)
            simpo, simpo_stats = preference_loss(
                batch, logp, logp_all[b:, :chosen.shape[1]], chosen_mask, failed, rejected, c.simpo_beta,
                c.simpo_gamma, weights, chosen_weights)
            loss = loss + c.simpo_weight * simpo  # L = L_GRPO + w * L_SimPO
            stats.update(simpo_stats)
        stats["entropy"] = masked_mean(entropy[:b, :t].detach(), batch.mask)
        return loss, stats


__all__ = ["RISER", "RISERConfig", "certainty_weights", "kl_cov_penalty", "unique_group_selection"]
