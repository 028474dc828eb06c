import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.baselines.maskable_ppo import MaskablePPOAgent, MaskablePPOConfig, train_maskable_ppo
from agents.training.evaluate import evaluate
from agents.training.tracking import MetricLogger
from recgym.envs import RecGenTask
from recgym.envs.sb3 import make_sb3_env


@pytest.fixture(scope="module")
def tasks(tiny_sid):
    train, _ = tiny_sid
    valid = RecGenTask(train.dataset, split="valid", tokenizer=train.items)
    return train, valid


@pytest.fixture(scope="module")
def agent(tasks):
    train, _ = tasks
    env = DummyVecEnv([lambda: make_sb3_env(train, history_items=2)])
    model = MaskablePPO("MlpPolicy", env, seed=3, device="cpu", policy_kwargs={"net_arch": [16]})
    return MaskablePPOAgent(model, env.envs[0])


def exhaustive_scores(agent, task, rows):
    """Every item's summed policy log-prob for each request (one depth at a time, all items at once)."""
    tree = task.tree
    items = tree.item_nodes
    paths = tree.paths(items)  # (I, D), -1 padded
    ex = task.examples
    scores = np.zeros((len(rows), len(items)))
    for i, row in enumerate(rows):
        history = np.repeat(ex.history[row:row + 1], len(items), axis=0)
        length = np.repeat(ex.history_len[row:row + 1], len(items))
        for d in range(tree.max_depth):
            real = paths[:, d] >= 0
            states = torch.as_tensor(tree.path_states(paths)[:, d].clip(min=0))
            tokens, logp = agent.token_logprobs(history, length, paths, np.full(len(items), d), states)
            pick = (tokens == torch.as_tensor(paths[:, d])[:, None]).float().argmax(dim=1)
            scores[i] += np.where(real, logp.gather(1, pick[:, None]).squeeze(1).numpy(), 0.0)
    return items, scores


def test_beam_search_returns_k_distinct_valid_items_ranked_by_the_policy(agent, tasks):
    train, _ = tasks
    rows = np.arange(6)
    terminals, scores = agent.beam_search_rows(train, rows, width=20, k=20)
    assert terminals.shape == scores.shape == (6, 20)
    assert (terminals >= 0).all() and train.tree.is_complete(terminals.reshape(-1)).all()
    assert all(len(set(t.tolist())) == 20 for t in terminals)
    assert (np.diff(scores, axis=1) <= 1e-6).all() and (scores <= 0).all()
    nodes, exact = exhaustive_scores(agent, train, rows)
    column = {int(n): j for j, n in enumerate(nodes)}
    for i in range(len(rows)):  # every returned score is the item's true sequence log-prob
        got = np.array([exact[i, column[int(t)]] for t in terminals[i]])
        assert np.allclose(got, scores[i], atol=1e-5)
    # A beam as wide as the catalogue is exhaustive: the top 10 are exactly the best 10 items.
    wide, wide_scores = agent.beam_search_rows(train, rows, width=train.tree.num_items, k=10)
    for i in range(len(rows)):
        best = np.sort(exact[i])[::-1][:10]
        assert np.allclose(wide_scores[i], best, atol=1e-5)
    with pytest.raises(ValueError, match="beam width"):
        agent.beam_search_rows(train, rows, width=5, k=10)


def test_beam_search_skips_excluded_items(agent, tasks):
    train, _ = tasks
    rows = np.arange(4)
    nodes, exact = exhaustive_scores(agent, train, rows)
    ex = train.examples
    excluded = [set(ex.history[r, : ex.history_len[r]].tolist())
                | {int(i) for n in nodes[np.argsort(-exact[j])[:5]] for i in train.tree.items(int(n))}
                for j, r in enumerate(rows)]  # the history and the 5 best items
    width = max(map(len, excluded))
    padded = np.array([sorted(e) + [-1] * (width - len(e)) for e in excluded])
    got, got_scores = agent.beam_search_rows(train, rows, width=train.tree.num_items, k=10,
                                             exclude_items=padded)
    for j in range(len(rows)):
        keep = [i for i, n in enumerate(nodes) if not set(train.tree.items(int(n)).tolist()) <= excluded[j]]
        best = sorted(keep, key=lambda i: -exact[j, i])[:10]
        assert got[j].tolist() == nodes[best].tolist()
        assert np.allclose(got_scores[j], exact[j, best], atol=1e-5)


def test_training_uses_exactly_the_episode_budget_and_logs_curves(tasks, tmp_path):
    train, valid = tasks
    torch.set_num_threads(1)
    config = MaskablePPOConfig(num_envs=4, episodes_per_update=8, hidden=16, progress=False)
    agent, summary = train_maskable_ppo(train, valid, 96, config, run_dir=tmp_path, eval_every_episodes=64,
                                        eval_requests=20)
    assert summary["episodes"] == 96 and summary["batches"] == 3  # 96 = 3 updates of 4 envs x 8 episodes
    assert summary["timesteps"] == 96 * train.max_response_len
    records = MetricLogger.read(tmp_path)
    steps = [r for r in records if "hit_rate" in r]
    assert [r["rollouts"] for r in steps] == [32, 64, 96]
    assert all(0 <= r["hit_rate"] <= 1 and r["entropy"] > 0 for r in steps)
    valids = [r["rollouts"] for r in records if "valid/HR@10" in r]
    assert valids == [0, 64, 96] and len(summary["valid_history"]) == 3
    assert summary["best_valid"] == max(h["HR@10"] for h in summary["valid_history"])
    metrics = evaluate(agent, valid, beam=20, max_requests=20, progress=False)
    assert metrics["requests"] == 20 and 0 <= metrics["HR@20"] <= 1
    # A budget that is not a multiple of an update stops mid-rollout, at the budget.
    _, partial = train_maskable_ppo(train, None, 40, config)
    assert partial["episodes"] == 40 and partial["batches"] == 2
