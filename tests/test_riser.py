import numpy as np
import pytest
import torch

from agents.learners.base import first_in_group
from agents.learners.grpo import GRPO, GRPOConfig
from agents.learners.riser import (
    RISER,
    RISERConfig,
    certainty_weights,
    kl_cov_penalty,
    unique_group_selection,
)
from agents.learners.simpo import preference_loss
from agents.policy import make_rollout_env
from recgym.envs import RecGenTask
from recgym.tree import PrefixTree


def rollout(task, policy, requests=4, m=8, seed=0, temperature=2.0):
    envs = make_rollout_env(task, requests * m)
    return policy.rollout(envs, group_size=m, rows=np.arange(requests), temperature=temperature,
                          generator=torch.Generator().manual_seed(seed), seed=seed)


def test_unique_group_selection_by_hand():
    terminal = np.array([[7, 7, 7, 7, 7], [1, 2, 1, 3, 4], [5, 6, 5, 6, 5]])
    select, distinct = unique_group_selection(terminal, 4)
    assert distinct.tolist() == [1, 4, 2]
    # Distinct items first in sampling order; cyclic repeats only when fewer than n are distinct.
    assert select.reshape(3, 4).tolist() == [[0, 0, 0, 0], [5, 6, 8, 9], [10, 11, 10, 11]]


def test_kl_cov_selects_top_covariance_tokens_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-4.0, -0.5, 0.0]])
    old = torch.tensor([[-1.5, -2.0, -9.0], [-4.0, -1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # Valid tokens: A = [1, 1, -1, -1] (mean 0), log pi = [-1, -2, -4, -0.5] (mean -1.875)
    # Cov = A * (log pi + 1.875) = [0.875, -0.125, 2.125, -1.375]: the top one is token (1, 0).
    penalty, selected = kl_cov_penalty(logp, old, adv, mask, k=0.25, coef=2.0)
    assert selected.tolist() == [[False, False, False], [True, False, False]]
    assert penalty[1, 0] == 0.0  # |log pi - log pi_old| = 0 there
    penalty, selected = kl_cov_penalty(logp, old, adv, mask, k=0.5, coef=2.0)  # two tokens
    assert selected.tolist() == [[True, False, False], [True, False, False]]
    assert penalty[0, 0].item() == pytest.approx(2.0 * 0.5)
    _, selected = kl_cov_penalty(logp, old, adv, mask, k=1e-9, coef=1.0)  # at least one token
    assert int(selected.sum()) == 1


def test_certainty_weights_from_a_known_tree():
    # Items: "5 1 <e>", "5 2 <e>", "7 <e>": the root and "5" branch; "5 1", "5 2", "7" force <e>.
    tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
    responses = np.array([[5, 2, 0], [7, 0, -1]])
    states = torch.as_tensor(tree.path_states(responses))
    weights = certainty_weights(tree.torch_tables("cpu"), states, states >= 0, 0.7)
    np.testing.assert_allclose(weights, [[1.0, 1.0, 0.7], [1.0, 0.7, 0.0]])


def _loss_and_grads(policy, learner, batch):
    policy.model.zero_grad()
    loss, stats = learner.loss(policy, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in policy.model.parameters()], stats


def test_riser_with_every_component_off_is_exactly_grpo(tiny_sid):
    task, policy = tiny_sid
    # A graded reward from the env's reward function, so that every group has non-zero advantages.
    graded = RecGenTask(task.dataset, split="train", tokenizer=task.items,
                        reward_fn=lambda items, target, example: float(items[0] % 3))
    ro = rollout(graded, policy, m=8)
    grpo = GRPO(GRPOConfig(group_size=8, clip_high=0.28))
    riser = RISER(RISERConfig(group_size=8, clip_high=0.28, oversample=8, simpo_weight=0.0, certainty_d=1.0,
                              kl_cov_k=0.0))
    batch_g, batch_r = grpo.make_batch(policy, ro), riser.make_batch(policy, ro)
    assert torch.equal(batch_g.responses, batch_r.responses)
    assert torch.equal(batch_g.advantages, batch_r.advantages)
    # Off-policy (stored old log-probs, perturbed) so that the clip acts.
    with torch.no_grad():
        old = grpo.logprobs(policy, batch_g)[0] + 0.3 * torch.randn(batch_g.responses.shape,
                                                                   generator=torch.Generator().manual_seed(0))
    batch_g.old_logp = batch_r.old_logp = old * batch_g.mask
    loss_g, grads_g, stats_g = _loss_and_grads(policy, grpo, batch_g)
    loss_r, grads_r, _ = _loss_and_grads(policy, riser, batch_r)
    assert stats_g["clip_frac"] > 0 and (batch_g.group_rewards().std(dim=1) > 0).all()
    assert torch.equal(loss_g, loss_r)
    for a, b in zip(grads_g, grads_r):
        assert torch.equal(a, b)


def test_riser_components(tiny_sid):
    task, policy = tiny_sid
    ro = rollout(task, policy, m=12, seed=1)
    base = dict(group_size=6, oversample=12, certainty_d=1.0, kl_cov_k=0.0)
    off = RISER(RISERConfig(**base, simpo_weight=0.0))
    on = RISER(RISERConfig(**base, simpo_weight=0.5, simpo_beta=2.0, simpo_gamma=0.3))
    batch = on.make_batch(policy, ro)
    # Oversampling: groups of n = 6 built from the distinct items of m = 12 rollouts.
    assert batch.responses.shape[0] == 4 * 6
    for g in range(4):
        raw = ro.terminal[g * 12:(g + 1) * 12].tolist()
        kept = batch.terminal[g * 6:(g + 1) * 6].tolist()
        distinct = list(dict.fromkeys(raw))
        assert kept == [distinct[i % len(distinct)] for i in range(6)]
    assert batch.unique.tolist() == [len(set(ro.terminal[g * 12:(g + 1) * 12].tolist())) for g in range(4)]
    # SimPO on failed groups only: L(w) - L(0) = w * L_SimPO over (target, distinct failed item) pairs.
    failed = torch.nonzero(~batch.hits.reshape(4, 6).any(dim=1)).squeeze(1)
    assert len(failed) > 0
    with torch.no_grad():
        loss_on, stats = on.loss(policy, batch)
        loss_off, _ = off.loss(policy, batch)
        groups = torch.arange(4)
        logp = on.logprobs(policy, batch, extra=batch.chosen, extra_index=groups)[0]
        b, t = batch.responses.shape
        in_failed = torch.zeros(4, dtype=torch.bool)
        in_failed[failed] = True
        rejected = in_failed[batch.group_index] & first_in_group(batch.terminal, batch.group_index)
        simpo, _ = preference_loss(batch, logp[:b, :t], logp[b:, :batch.chosen.shape[1]], batch.chosen >= 0,
                                   groups, rejected, 2.0, 0.3)
    assert stats["simpo_pairs"] == int(rejected.sum())
    assert (loss_on - loss_off).item() == pytest.approx(0.5 * simpo.item(), rel=1e-4, abs=1e-6)


def test_certainty_mask_acts_only_where_forced_tokens_carry_gradient(tiny_sid):
    """Constrained log-probs: a forced token has pi = 1, so d changes nothing; full vocabulary: it does."""
    task, policy = tiny_sid
    ro = rollout(task, policy, m=6, seed=2)
    losses = {}
    for full_vocab in (False, True):
        for d in (1.0, 0.3):
            learner = RISER(RISERConfig(group_size=6, oversample=6, simpo_weight=1.0, certainty_d=d,
                                        kl_cov_k=0.0, full_vocab=full_vocab))
            batch = learner.make_batch(policy, ro)
            losses[full_vocab, d] = _loss_and_grads(policy, learner, batch)
    assert torch.allclose(losses[False, 1.0][0], losses[False, 0.3][0], atol=1e-6)
    assert not torch.allclose(losses[True, 1.0][0], losses[True, 0.3][0], atol=1e-4)
    with pytest.raises(ValueError, match="oversample"):
        RISERConfig(group_size=16, oversample=8)
