"""The learner contract (agents/learners/base.py): rollout modes, the env's reward, the group-hit number."""

import copy

import numpy as np
import pytest
import torch

from agents.configs import RLConfig
from agents.learners import make_learner
from agents.learners.grpo import GRPOConfig
from agents.model.policy import make_rollout_env
from agents.training.rl import train_rl
from agents.training.runs import run_fingerprint
from agents.training.tracking import MetricLogger

ROWS = np.array([0, 3, 7, 11])


def _collect(learner, task, policy, rows=ROWS):
    reward_task = task.with_reward(learner.reward) if learner.reward else task
    envs = make_rollout_env(reward_task, len(rows) * learner.rollouts_per_request)
    return learner.collect(policy, envs, rows, generator=torch.Generator().manual_seed(0), seed=0)


@pytest.mark.parametrize("name", ["grpo", "simpo", "riser"])
def test_a_beam_group_is_the_beam_searchs_top_g_with_env_rewards(tiny_sid, name,
                                                                 rows_with_and_without_a_beam_hit):
    task, policy = tiny_sid
    rows = rows_with_and_without_a_beam_hit(task, policy, 5)
    assert len(rows) == 4
    settings = {"group_size": 5, "rollout": "beam", "reward": "ranking"}
    if name == "riser":
        settings["oversample"] = 5
    learner = make_learner(name, **settings)
    batch = _collect(learner, task, policy, rows)
    expected, _ = policy.beam_search(*task.prompt_tokens(rows), width=5, k=5)
    assert batch.terminal.reshape(4, 5).tolist() == expected.tolist()
    for i, node in enumerate(batch.terminal.tolist()):  # each response is its item's path
        assert task.tree.walk(batch.responses[i][batch.mask[i]].tolist()) == node
        assert bool(batch.hits[i]) == (int(task.examples.target[rows[i // 5]]) in task.tree.items(node))
    # ReRe's ranking reward by rank (beam j = rank j), paid by the env: the misses of the first two
    # groups pay -(1 / log2(j + 2)) / sum_k 1 / log2(k + 2), the last two groups get 0
    hits = batch.hits.reshape(4, 5).numpy()
    assert hits[:2].any(axis=1).all() and not hits[2:].any()
    z = sum(1 / np.log2(k + 2) for k in range(5))
    expected_rewards = np.where(hits, 1.0, np.where(hits.any(axis=1, keepdims=True),
                                                    -1 / np.log2(np.arange(5) + 2) / z, 0.0))
    np.testing.assert_allclose(batch.rewards.reshape(4, 5).numpy(), expected_rewards, atol=1e-6)
    assert batch.stats["group_hit"] == pytest.approx(0.5)


def test_top_k_one_samples_the_greedy_item(tiny_sid):
    task, policy = tiny_sid
    greedy = make_learner("grpo", group_size=4, top_k=1)
    batch = _collect(greedy, task, policy)
    first_beam, _ = policy.beam_search(*task.prompt_tokens(ROWS), width=1, k=1)
    # top-1 sampling is greedy decoding: every rollout of a request is the same item, the width-1 beam's
    assert batch.terminal.reshape(4, 4).tolist() == np.repeat(first_beam, 4, axis=1).tolist()
    sampled = _collect(make_learner("grpo", group_size=4), task, policy)
    assert len(set(sampled.terminal.tolist())) > 4  # without top-k the groups vary


def test_group_hit_counts_groups_with_a_hit(tiny_sid):
    task, policy = tiny_sid
    batch = _collect(make_learner("grpo", group_size=8, temperature=3.0), task, policy)
    hits = batch.hits.reshape(4, 8).numpy()
    assert batch.stats["group_hit"] == pytest.approx(np.mean([row.any() for row in hits]))
    assert batch.stats["hit_rate"] == pytest.approx(hits.mean())


def test_rollout_settings_are_checked_and_fingerprinted(tiny_sid):
    task, policy = tiny_sid
    with pytest.raises(ValueError, match="rollout='beams'"):
        GRPOConfig(rollout="beams")
    with pytest.raises(ValueError, match="top_k"):
        GRPOConfig(top_k=0)
    with pytest.raises(ValueError, match="sampled rollouts only"):
        GRPOConfig(rollout="beam", top_k=5)
    with pytest.raises(ValueError, match="reward='ndcg'"):
        GRPOConfig(reward="ndcg")
    prints = [run_fingerprint("rl", RLConfig(), task, None, policy=policy, learner=make_learner("grpo", **s))
              for s in ({}, {"rollout": "beam"}, {"reward": "ranking"})]
    assert prints[0] != prints[1] and prints[0] != prints[2]


def test_the_loop_trains_on_the_learners_reward_and_logs_group_hit(tiny_sid, tmp_path, monkeypatch):
    import agents.training.rl

    task, policy = tiny_sid
    built = []

    def spy(reward_task, num_envs, env_id="RecGen-v0"):
        built.append(reward_task.reward)
        return make_rollout_env(reward_task, num_envs, env_id)

    monkeypatch.setattr(agents.training.rl, "make_rollout_env", spy)
    learner = make_learner("grpo", group_size=4, rollout="beam", reward="rank_discounted", beta=0.0)
    config = RLConfig(steps=2, requests_per_step=4, minibatches=1, progress=False)
    train_rl(copy.deepcopy(policy), learner, task, None, config, run_dir=tmp_path / "run")
    assert built == ["rank_discounted"] and task.reward == "hit"  # the task itself is left as it was
    records = MetricLogger.read(tmp_path / "run")
    assert [0.0 <= r["group_hit"] <= 1.0 for r in records if "group_hit" in r] == [True, True]
