import numpy as np
import pytest
import torch

from agents.learners.base import group_advantages
from agents.learners.grpo import GRPO, GRPOConfig, aggregate, clipped_token_loss, k3_kl


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
