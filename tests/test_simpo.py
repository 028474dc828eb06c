import numpy as np
import pytest
import torch

from agents.learners.simpo import (
    SimPO,
    SimPOConfig,
    length_normalized_reward,
    simpo_loss,
)
from agents.model.policy import make_rollout_env


def test_reward_and_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-6.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # r = beta / |y| * sum log pi: 2 * -3 / 2 and 2 * -6 / 1
    np.testing.assert_allclose(length_normalized_reward(logp, mask, 2.0), [-3.0, -12.0])
    w = torch.tensor([[1.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(length_normalized_reward(logp, mask, 2.0, w), [-2.0, -12.0])
    loss, margin = simpo_loss(torch.tensor([-3.0, -3.0]), torch.tensor([-12.0, -2.0]), 1.0)
    assert margin.tolist() == [9.0, -1.0]
    expected = -(np.log(1 / (1 + np.exp(-8.0))) + np.log(1 / (1 + np.exp(2.0)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_simpo_learner_loss_equals_pairs_by_hand(tiny_sid):
    task, policy = tiny_sid
    learner = SimPO(SimPOConfig(group_size=6, beta=2.0, gamma=0.5))
    envs = make_rollout_env(task, 4 * 6)
    batch = learner.collect(policy, envs, np.arange(4), generator=torch.Generator().manual_seed(0), seed=0)
    loss, stats = learner.loss(policy, batch)
    # By hand: teacher-forced log-probs of every chosen and rejected item, one pair per distinct miss.
    prompts, lens = task.prompt_tokens(batch.rows)
    with torch.no_grad():
        chosen = policy.sequence_logprobs(prompts, lens, batch.chosen)
        r_w = (2.0 * chosen[0].sum(1) / chosen[2].sum(1)).tolist()
        terms = []
        for g in range(4):
            seen = set()
            for i in range(g * 6, g * 6 + 6):
                node = int(batch.terminal[i])
                if batch.hits[i] or node in seen:
                    continue
                seen.add(node)
                y = batch.responses[i: i + 1]
                lp, _, m = policy.sequence_logprobs(prompts[g: g + 1], lens[g: g + 1], y)
                r_l = 2.0 * lp.sum().item() / m.sum().item()
                terms.append(-np.log(1 / (1 + np.exp(-(r_w[g] - r_l - 0.5)))))
    assert stats["simpo_pairs"] == len(terms) > 0
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-4)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.model.parameters())


def test_beam_negatives_are_distinct_items_with_env_rewards(tiny_sid):
    task, policy = tiny_sid
    learner = SimPO(SimPOConfig(group_size=5, rollout="beam"))
    envs = make_rollout_env(task, 3 * 5)
    rows = np.array([0, 4, 9])
    batch = learner.collect(policy, envs, rows, generator=torch.Generator(), seed=0)
    terminal = batch.terminal.reshape(3, 5)
    assert all(len(set(r)) == 5 for r in terminal.tolist())
    for i, node in enumerate(batch.terminal.tolist()):
        assert bool(batch.hits[i]) == (int(task.examples.target[rows[i // 5]]) in task.tree.items(node))
        path = batch.responses[i][batch.mask[i]].tolist()
        assert task.tree.walk(path) == node
    loss, _ = learner.loss(policy, batch)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="rollout"):
        SimPOConfig(rollout="random")
