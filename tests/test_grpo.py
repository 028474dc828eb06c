import numpy as np
import pytest
import torch

from agents.learners.base import group_advantages
from agents.learners.grpo import GRPO, GRPOConfig, aggregate, clipped_token_loss, k3_kl
from agents.model.policy import make_rollout_env


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    # Group 1: mean 0.25, unbiased std 0.5; group 2: mean 0.5, std sqrt(1/3).
    a = group_advantages(r, 4, eps=0.0)
    np.testing.assert_allclose(a[:4], [1.5, -0.5, -0.5, -0.5], atol=1e-6)
    s = np.sqrt(1 / 3)
    np.testing.assert_allclose(a[4:], [0.5 / s, 0.5 / s, -0.5 / s, -0.5 / s], atol=1e-6)
    # Dr. GRPO: no std.
    np.testing.assert_allclose(group_advantages(r, 4, scale=False)[:4], [0.75, -0.25, -0.25, -0.25])
    # A group with equal rewards has zero advantages (no NaN).
    assert group_advantages(torch.ones(4), 4).tolist() == [0.0] * 4


def test_clipped_loss_by_hand():
    rho = torch.tensor([[1.5, 0.5, 0.5, 1.25, 1.0]])
    adv = torch.tensor([[2.0, 2.0, -1.0, 1.0, -3.0]])
    loss, clipped = clipped_token_loss(torch.log(rho), torch.zeros_like(rho), adv, 0.2, 0.2)
    # min(rho A, clip(rho) A): 1.5*2 vs 1.2*2; 0.5*2 vs 0.8*2; -0.5 vs -0.8; 1.25 vs 1.2; -3 vs -3
    np.testing.assert_allclose(-loss[0], [2.4, 1.0, -0.8, 1.2, -3.0], atol=1e-6)
    assert clipped[0].tolist() == [True, False, True, True, False]
    # Clip-higher (DAPO): eps_high = 0.28 lets rho = 1.25 through.
    loss, clipped = clipped_token_loss(torch.log(rho), torch.zeros_like(rho), adv, 0.2, 0.28)
    assert -loss[0, 3].item() == pytest.approx(1.25) and not clipped[0, 3]


def test_k3_kl_and_aggregation_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    # exp(q) - q - 1 with q = log(ref / pi): q = log 0.5 and log 2.
    expected = [0.5 - np.log(0.5) - 1, 2 - np.log(2) - 1]
    np.testing.assert_allclose(k3_kl(logp, ref), expected, atol=1e-6)
    assert k3_kl(logp, logp).abs().max() == 0
    loss = torch.tensor([[2.0, 4.0, 9.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert aggregate(loss, mask, "grpo", 4).item() == pytest.approx((3.0 + 1.0) / 2)
    assert aggregate(loss, mask, "dapo", 4).item() == pytest.approx(7.0 / 3)
    assert aggregate(loss, mask, "dr_grpo", 4).item() == pytest.approx(7.0 / 8)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="mean")
    with pytest.raises(ValueError, match="at least 2"):
        GRPOConfig(group_size=1)


def test_grpo_learner_defaults():
    learner = GRPO(GRPOConfig(group_size=6, beta=0.1))
    assert learner.rollouts_per_request == 6 and learner.needs_reference
    assert learner.describe()["name"] == "grpo" and learner.describe()["beta"] == 0.1


def test_grpo_update_uses_the_full_vocabulary_by_default(tiny_sid, full_vocab_logprobs_by_hand):
    """GRPOConfig() trains the policy's objective, the whole vocabulary's softmax by default: its log-probs
    and its loss and gradient equal a hand computation from the model's logits (not renormalised)."""
    task, policy = tiny_sid
    envs = make_rollout_env(task, 4 * 4)
    ro = policy.rollout(envs, group_size=4, rows=np.arange(4), temperature=1.0,
                        generator=torch.Generator().manual_seed(0), seed=0)
    learner = GRPO(GRPOConfig(group_size=4))
    assert policy.objective == "full" and learner.config.beta == 1e-3
    batch = learner.make_batch(policy, ro)
    batch.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5] * 4)
    mask = batch.mask
    policy.model.zero_grad()
    logp = full_vocab_logprobs_by_hand(policy, batch)
    with torch.no_grad():
        learner_logp = learner.logprobs(policy, batch)[0]
    # Forced tokens (one allowed child) have pi < 1 under the full vocabulary; renormalised they'd be 0.
    assert (logp.detach()[mask] < -1e-3).all()
    torch.testing.assert_close(learner_logp[mask], logp.detach()[mask], rtol=1e-4, atol=1e-4)
    # One update's loss by hand: pi_old = this policy (rho = 1), a reference 0.2 nats below it;
    # l_t = -A_i rho_t + beta (exp(q) - q - 1), q = log pi_ref - log pi; mean per sequence, then over them.
    old = logp.detach() * mask
    batch.old_logp, batch.ref_logp = old, (old - 0.2) * mask
    q = batch.ref_logp - logp
    token = -batch.advantages[:, None] * torch.exp(logp - old) + 1e-3 * (torch.exp(q) - q - 1)
    expected = ((token * mask).sum(dim=1) / mask.sum(dim=1)).mean()
    expected.backward()
    expected_grads = [p.grad.clone() for p in policy.model.parameters()]
    assert expected.item() == pytest.approx(1e-3 * (np.exp(-0.2) + 0.2 - 1), abs=1e-7)  # mean A_i = 0
    policy.model.zero_grad()
    loss, _ = learner.loss(policy, batch)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    scale = max(float(g.abs().max()) for g in expected_grads)
    for p, e in zip(policy.model.parameters(), expected_grads):
        torch.testing.assert_close(p.grad, e, rtol=1e-3, atol=1e-4 * scale)
    policy.model.zero_grad()
