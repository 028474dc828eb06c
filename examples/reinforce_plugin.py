"""A plug-in learner: REINFORCE with a moving-average baseline, benchmarked without editing recgym.

Importing this file registers the learner ``reinforce``; ``--plugin`` imports it, in ``recgym train``
and ``recgym bench`` alike:

    recgym train --plugin examples/reinforce_plugin.py --agent reinforce --out runs/reinforce
    recgym bench --plugin examples/reinforce_plugin.py --agents sft,grpo,reinforce --preset ci \\
        --out runs/bench-plugin

The loss is the score-function estimator with a baseline b (an exponential moving average of past
batches' mean reward, so A_i does not depend on y_i's own reward):

    A_i = r_i - b,      L = -(1 / sum_i |y_i|) * sum_i sum_t A_i * log pi(y_i,t | x, y_i,<t)
    b  <- decay * b + (1 - decay) * mean_i r_i          (after each batch; b = first batch's mean)

The training loop (request sampling, optimizer, validation, checkpoints, logging) is
:func:`agents.training.rl.train_rl`'s; only the batch and the loss are written here. (The baseline is not
part of the checkpoint, so a resumed run restarts it.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.learners import Learner, RLBatch, learner_names, masked_mean, register_learner
from agents.model.policy import LLMPolicy, Rollout


@dataclass
class ReinforceConfig:
    """Settings: ``group_size`` rollouts per request (the bench sets it to its budget), the
    baseline's ``decay``, the sampling ``temperature`` and ``full_vocab`` normalisation."""

    group_size: int = 16
    decay: float = 0.9
    temperature: float = 1.0
    full_vocab: bool = False


class Reinforce(Learner):
    """REINFORCE with a moving-average reward baseline.

    Example:
        >>> Reinforce(ReinforceConfig(group_size=8)).rollouts_per_request
        8
    """

    name = "reinforce"
    config_class = ReinforceConfig  # from_settings builds it and rejects unknown settings
    needs_old_logprobs = False  # no ratio, no clip: the behaviour log-probs are never read

    def __init__(self, config: ReinforceConfig | None = None) -> None:
        self.config = config or ReinforceConfig()
        self.baseline: float | None = None

    def make_batch(self, policy: LLMPolicy, rollout: Rollout) -> RLBatch:
        batch = RLBatch.from_rollout(policy, rollout, np.arange(len(rollout.rows)), rollout.group_size)
        mean = float(batch.rewards.mean())
        b = mean if self.baseline is None else self.baseline
        batch.advantages = batch.rewards - b  # A_i = r_i - b
        self.baseline = b if self.baseline is None else self.config.decay * b + (1 - self.config.decay) * mean
        batch.stats["baseline"] = b
        return batch

    def loss(self, policy: LLMPolicy, batch: RLBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logp, entropy = self.logprobs(policy, batch)
        loss = -(batch.advantages[:, None] * logp * batch.mask).sum() / batch.mask.sum()
        return loss, {"entropy": masked_mean(entropy.detach(), batch.mask)}


if "reinforce" not in learner_names():  # importing twice (e.g. as a module and as a file) is harmless
    register_learner("reinforce", Reinforce)  # exactly as the built-in learners register
