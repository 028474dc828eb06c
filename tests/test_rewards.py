import math

import numpy as np
import pytest

from recgym.envs import RecGenEnv, RecGenTask
from recgym.envs.vector import RecGenVectorEnv
from recgym.rewards import list_bonus, rank_gains, rank_penalties, ranked_rewards

SMALL = {"num_items": 300, "num_users": 200}

# By hand: 1 / log2(j + 2) for j = 0, 1, 2, 3 and their running sums (ReRe's normalisers).
GAINS = [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(5)]  # 1, 0.63093, 0.5, 0.43068


@pytest.fixture(scope="module")
def task():
    return RecGenTask("synthetic", representation="title", dataset_kwargs=SMALL, vocab_size=800)


def test_rank_gains_and_penalties_by_hand():
    np.testing.assert_allclose(rank_gains(np.arange(4)), GAINS)
    z = sum(GAINS[:3])  # 2.13093
    np.testing.assert_allclose(rank_penalties(np.arange(3), 3), [-1 / z, -GAINS[1] / z, -0.5 / z])
    assert rank_penalties(np.arange(4), 4).sum() == pytest.approx(-1.0)  # ReRe's p_j sum to -1
    # lists of different sizes in one call: rank 1 of a list of 2, rank 0 of a list of 1
    np.testing.assert_allclose(rank_penalties(np.array([1, 0]), np.array([2, 1])),
                               [-GAINS[1] / (1 + GAINS[1]), -1.0])
    with pytest.raises(ValueError, match="ranks must lie"):
        rank_penalties(np.array([3]), 3)


def test_ranked_rewards_by_hand():
    hits = np.array([[False, True, False], [False, False, False], [True, False, True]])
    z = sum(GAINS[:3])
    # ReRe (rere.py: rule_reward + ndcg_rule_reward): a hit 1; a miss -(1/log2(j+2))/z when its
    # list holds a hit, 0 when none does.
    np.testing.assert_allclose(ranked_rewards(hits, "ranking"),
                               [[-1 / z, 1.0, -0.5 / z], [0, 0, 0], [1.0, -GAINS[1] / z, 1.0]])
    np.testing.assert_allclose(ranked_rewards(hits, "rank_discounted"),
                               [[0, GAINS[1], 0], [0, 0, 0], [1.0, 0, 0.5]])
    np.testing.assert_allclose(ranked_rewards(hits, "hit", hit_reward=2.0, miss_reward=-1.0),
                               [[-1, 2, -1], [-1, -1, -1], [2, -1, 2]])
    # the miss reward is the base of ReRe's penalty too
    np.testing.assert_allclose(ranked_rewards(hits[:1], "ranking", miss_reward=-1.0)[0],
                               [-1 - 1 / z, 1.0, -1 - 0.5 / z])
    assert (list_bonus(hits, "rank_discounted") == 0).all()
    with pytest.raises(ValueError, match="choose one of"):
        ranked_rewards(hits, "ndcg")


def _play(envs, paths):
    """Step every slot through its token path (-1 padded); returns the per-slot reward sums and the
    per-step rewards."""
    total, steps = np.zeros(envs.num_envs), []
    for t in range(paths.shape[1]):
        actions = np.where(paths[:, t] >= 0, paths[:, t], 0)
        _, rewards, _, _, info = envs.step(actions)
        total += rewards
        steps.append(rewards)
    return total, np.array(steps), info


def _target_and_others(task, rows, count):
    """Token paths of each row's target and of ``count`` other items (padded to one width)."""
    items = []
    for row in rows:
        target = int(task.examples.target[row])
        others = [i for i in range(task.dataset.catalogue.num_items) if i != target][:count]
        items.append((target, others))
    return items


@pytest.mark.parametrize("reward", ["ranking", "rank_discounted", "hit"])
def test_vector_env_pays_ranked_rewards_through_groups(task, reward):
    rows = np.array([3, 7])
    envs = RecGenVectorEnv(6, task.with_reward(reward), autoreset_mode="disabled", dense_masks=False)
    _, info = envs.reset(seed=0, options={"group_size": 3, "rows": rows})
    assert info["rank"].tolist() == [0, 1, 2, 0, 1, 2]
    (t0, o0), (t1, o1) = _target_and_others(task, rows, 3)
    # list 0: the target at rank 1; list 1: three misses
    seqs = [task.tree.sequence_of(i) for i in (o0[0], t0, o0[1], o1[0], o1[1], o1[2])]
    width = max(len(s) for s in seqs)
    paths = np.array([np.pad(s, (0, width - len(s)), constant_values=-1) for s in seqs])
    total, _, info = _play(envs, paths)
    hits = info["hit"].reshape(2, 3)
    # items that denote the target too (shared titles) would hit: the expected values use the env's hits
    assert hits[0, 1] and not hits[1].any()
    np.testing.assert_allclose(total.reshape(2, 3), ranked_rewards(hits, reward))
    if reward == "ranking" and hits[0].sum() == 1:
        z = sum(GAINS[:3])
        np.testing.assert_allclose(total[:3], [-1 / z, 1.0, -0.5 / z])


def test_ranking_reward_is_paid_when_the_last_slot_of_a_list_ends(task):
    envs = RecGenVectorEnv(2, task.with_reward("ranking"), autoreset_mode="disabled", dense_masks=False)
    _, info = envs.reset(seed=0, options={"group_size": 2, "rows": [5]})
    target = int(task.examples.target[5])
    # rank 0 ends at once with an invalid token (a miss); rank 1 plays the target
    hit_path = task.tree.sequence_of(target)
    allowed = set(task.tree.allowed_tokens(np.array([task.tree.root]))[1].tolist())
    invalid = next(t for t in range(task.vocab_size) if t not in allowed)
    paths = np.full((2, len(hit_path)), -1)
    paths[0, 0] = invalid
    paths[1] = hit_path
    total, steps, info = _play(envs, paths)
    assert info["invalid_action"][0] and info["hit"][1]
    p0 = -1 / (1 + GAINS[1])  # rank 0 of a list of 2
    assert steps[0, 0] == 0.0  # the miss ends first: nothing is known about its list yet
    assert steps[-1, 0] == pytest.approx(p0)  # paid when rank 1 ends, although slot 0 has ended
    np.testing.assert_allclose(total, [p0, 1.0])


def test_single_env_is_a_list_of_one(task):
    row = 4
    target = int(task.examples.target[row])
    for reward in ("ranking", "rank_discounted"):
        env = RecGenEnv(task=task.with_reward(reward))
        env.reset(seed=0, options={"row": row})
        for token in task.tree.sequence_of(target):
            _, r, done, _, _ = env.step(int(token))
        assert done and r == 1.0  # rank 0 of a list of one: the hit reward


def test_reward_option_errors(task):
    with pytest.raises(ValueError, match="reward='ndcg'"):
        task.with_reward("ndcg")
    with pytest.raises(ValueError, match="reward_fn"):
        RecGenTask("synthetic", representation="sid", dataset_kwargs=SMALL, reward="ranking",
                   reward_fn=lambda items, target, request: 0.0)
    envs = RecGenVectorEnv(4, task.with_reward("ranking"), autoreset_mode="next_step", dense_masks=False)
    with pytest.raises(ValueError, match="autoreset_mode='disabled'"):
        envs.reset(seed=0, options={"group_size": 2})
    envs.reset(seed=0)  # lists of one are fine in next_step mode
