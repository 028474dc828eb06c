"""SimPO (Meng et al. 2024): reference-free preference optimisation with a length-normalised reward.

    r(y) = beta / |y| * log pi(y | x) = beta / |y| * sum_t log pi(y_t | x, y_<t)
    L    = -log sigmoid(r(y_w) - r(y_l) - gamma)

For recommendation the chosen item y_w is the one the user really chose next (the ground truth) and
each rejected y_l is a distinct item the policy produced that missed: sampled through the env
(``negatives="sample"``) or the top beam items (``negatives="beam"``, as ReRe draws negatives).
Optional token weights w_t (RISER's certainty mask) make the sum sum_t w_t log pi(y_t | ...);
|y| stays the token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from agents import distributed as dist
from agents.learners.base import Learner, RLBatch, first_in_group, masked_mean
from agents.policy import LLMPolicy, Rollout
from recgym.envs.vector import RecGenVectorEnv


@dataclass
class SimPOConfig:
    """SimPO settings. ``beta`` and ``gamma`` are our defaults (the SimPO paper tunes beta in
    [2, 2.5] and gamma / beta around 0.5); RISER leaves them open.

    Args:
        group_size: items drawn per request to find rejected ones.
        negatives: ``sample`` (constrained sampling through the env) or ``beam`` (top items of a
            constrained beam search of width ``group_size``).
        beta, gamma: SimPO's reward scale and target margin.
        temperature: sampling temperature (the update uses the same one).
        full_vocab: override the policy's objective (None: the policy's, full vocabulary by default).
    """

    group_size: int = 16
    negatives: str = "sample"
    beta: float = 2.0
    gamma: float = 1.0
    temperature: float = 1.0
    full_vocab: bool | None = None

    def __post_init__(self) -> None:
        if self.negatives not in ("sample", "beam"):
            raise ValueError(f"negatives={self.negatives!r}: choose 'sample' or 'beam'")


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
    Inside :func:`agents.distributed.loss_sync` the mean is over the global batch's pairs (every rank
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
        >>> SimPO(SimPOConfig(negatives="beam", group_size=10)).rollouts_per_request
        10
    """

    name = "simpo"
    needs_old_logprobs = False
    config: SimPOConfig
    config_class = SimPOConfig

    def __init__(self, config: SimPOConfig | None = None) -> None:
        self.config = config or SimPOConfig()

    def collect(
        self, policy: LLMPolicy, envs: RecGenVectorEnv, rows: np.ndarray, *, generator: torch.Generator,
        seed: int,
    ) -> RLBatch:
        if self.config.negatives == "sample":
            return super().collect(policy, envs, rows, generator=generator, seed=seed)
        return self.make_batch(policy, beam_rollout(policy, envs, rows, self.config.group_size))

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


@torch.no_grad()
def beam_rollout(policy: LLMPolicy, envs: RecGenVectorEnv, rows: np.ndarray, width: int) -> Rollout:
    """The top ``width`` distinct items of a constrained beam search per request, as a :class:`Rollout`.

    Rewards and hits come from the env's task (its reward function included); the tokens are the
    items' paths in the env's prefix tree. ``logprobs`` are not filled (zeros).
    """
    task = envs.task
    prompt_ids, prompt_len = task.prompt_tokens(rows)
    terminal, _ = policy.beam_search(prompt_ids, prompt_len, width=width, k=width)
    terminal = terminal.reshape(-1)
    # Fewer than `width` items exist only in tiny catalogues: repeat the best one there.
    terminal = np.where(terminal >= 0, terminal, np.repeat(terminal.reshape(len(rows), width)[:, 0], width))
    targets = np.repeat(task.examples.target[rows], width)
    requests = [task.request(int(r)) for r in np.repeat(rows, width)] if task.reward_fn else None
    rewards, hits = task.rewards(terminal, targets, requests)
    paths = task.tree.paths(terminal)
    states = task.tree.path_states(paths)
    dev = policy.device
    ids, mask = policy.left_pad(prompt_ids, prompt_len)

    def tensor(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(a, device=dev, dtype=dtype)

    return Rollout(
        prompt_ids=ids, prompt_mask=mask, tokens=tensor(np.maximum(paths, 0)), mask=tensor(states >= 0),
        logprobs=torch.zeros(paths.shape, device=dev), states=tensor(states),
        rewards=tensor(rewards, torch.float32), hits=tensor(hits), terminal=tensor(terminal),
        rows=np.repeat(rows, width), targets=targets, group_size=width)


__all__ = ["SimPO", "SimPOConfig", "beam_rollout", "length_normalized_reward",
           "preference_loss", "simpo_loss"]
