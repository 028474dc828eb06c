"""Rewards of a generated item given its rank in the agent's list and the hits of that list.

An env pays one of these when an episode ends (``RecGenTask(reward=...)``, ``gym.make(...,
reward=...)``). In a vector env reset with ``options={"group_size": G}`` the G consecutive slots
of a request are one ranked list: slot j holds rank j (0-based), as in ReRe and MiniOneRec, whose
groups are the G beams of one constrained beam search in beam order. A single-episode env is a
list of one (rank 0), where every reward below is the hit reward.

``hit`` (the default)
    r = hit_reward if the item is the target, else miss_reward.
``ranking`` (ReRe's ``reward_type="ranking"``, ``rere.py``: ``rule_reward`` + ``ndcg_rule_reward``;
MiniOneRec's ``rl.py`` is the same code)
    a hit earns hit_reward; a miss at rank j earns miss_reward + p_j when another item of its list
    hit, and miss_reward when none did, with

        p_j = -(1 / log2(j + 2)) / sum_{k < G} 1 / log2(k + 2)        (the p_j of a list sum to -1)

    so a confident miss ranked above a hit costs more than a miss far down the list. The p_j part
    depends on the whole list: a vector env pays it on the step the list's last slot ends.
``rank_discounted``
    a hit at rank j earns hit_reward / log2(j + 2) (its NDCG gain), a miss miss_reward: a hit
    ranked first is worth more than one ranked last.

Example:
    >>> hits = np.array([[False, True, False]])
    >>> ranked_rewards(hits, "ranking").round(4).tolist()
    [[-0.4693, 1.0, -0.2346]]
    >>> ranked_rewards(hits, "rank_discounted").round(4).tolist()
    [[0.0, 0.6309, 0.0]]
"""

from __future__ import annotations

import numpy as np

REWARDS = ("hit", "ranking", "rank_discounted")
"""The rewards an env pays (``RecGenTask(reward=...)``); see the module docstring."""

GROUP_REWARDS = ("ranking",)
"""Rewards whose value depends on the other items of the list (paid when the whole list has ended)."""


def rank_gains(ranks: np.ndarray) -> np.ndarray:
    """1 / log2(j + 2) for 0-based ranks j: the NDCG gain of a hit at rank j.

    Example:
        >>> rank_gains(np.array([0, 1, 2])).round(4).tolist()
        [1.0, 0.6309, 0.5]
    """
    return 1.0 / np.log2(np.asarray(ranks, dtype=np.float64) + 2.0)


def rank_penalties(ranks: np.ndarray, sizes: np.ndarray | int) -> np.ndarray:
    """ReRe's p_j = -(1 / log2(j + 2)) / sum_{k < G} 1 / log2(k + 2) for rank j in a list of G.

    Example:
        >>> rank_penalties(np.arange(3), 3).round(4).tolist()   # the normaliser is 2.1309
        [-0.4693, -0.2961, -0.2346]
    """
    ranks = np.asarray(ranks)
    sizes = np.broadcast_to(np.asarray(sizes), ranks.shape)
    if (sizes < 1).any() or (ranks < 0).any() or (ranks >= sizes).any():
        raise ValueError("ranks must lie in [0, G) of lists of G >= 1 items")
    # sum_{k < G} 1 / log2(k + 2) for every G up to the largest, by one cumulative sum
    normaliser = np.cumsum(rank_gains(np.arange(int(sizes.max()) if sizes.size else 0)))
    return -rank_gains(ranks) / normaliser[sizes - 1] if ranks.size else np.zeros(ranks.shape)


def item_rewards(
    hits: np.ndarray, ranks: np.ndarray, reward: str, hit_reward: float = 1.0, miss_reward: float = 0.0
) -> np.ndarray:
    """What each item earns on its own when its episode ends (``ranking``'s p_j comes later, with
    :func:`list_bonus`).

    Example:
        >>> item_rewards(np.array([True, True, False]), np.array([0, 2, 1]), "rank_discounted").tolist()
        [1.0, 0.5, 0.0]
    """
    check_reward(reward)
    hits = np.asarray(hits, dtype=bool)
    if reward == "rank_discounted":
        return np.where(hits, hit_reward * rank_gains(ranks), miss_reward)
    return np.where(hits, hit_reward, miss_reward)


def list_bonus(hits: np.ndarray, reward: str) -> np.ndarray:
    """The part of each item's reward that depends on its whole list, for (R, G) hits in rank order.

    ``ranking``: p_j on the misses of lists that hold a hit, 0 elsewhere; 0 for the other rewards.

    Example:
        >>> list_bonus(np.array([[True, False], [False, False]]), "ranking").round(4).tolist()
        [[0.0, -0.3869], [0.0, 0.0]]
    """
    check_reward(reward)
    hits = np.asarray(hits, dtype=bool)
    if reward != "ranking" or hits.size == 0:
        return np.zeros(hits.shape)
    r, g = hits.shape
    penalties = rank_penalties(np.arange(g), g)
    return np.where(~hits & hits.any(axis=1, keepdims=True), penalties[None, :], 0.0)


def ranked_rewards(
    hits: np.ndarray, reward: str, hit_reward: float = 1.0, miss_reward: float = 0.0
) -> np.ndarray:
    """The whole reward of every item of R ranked lists of G, from their (R, G) hits in rank order.

    Example:
        >>> ranked_rewards(np.array([[True, False]]), "hit").tolist()
        [[1.0, 0.0]]
    """
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2:
        raise ValueError(f"hits must be a 2-D (lists, ranks) array, got shape {hits.shape}")
    ranks = np.broadcast_to(np.arange(hits.shape[1]), hits.shape)
    return item_rewards(hits, ranks, reward, hit_reward, miss_reward) + list_bonus(hits, reward)


def check_reward(reward: str) -> str:
    """``reward`` if it is one of :data:`REWARDS`, else a ValueError naming them.

    Example:
        >>> check_reward("ndcg")
        Traceback (most recent call last):
        ...
        ValueError: reward='ndcg': choose one of ('hit', 'ranking', 'rank_discounted')
    """
    if reward not in REWARDS:
        raise ValueError(f"reward={reward!r}: choose one of {REWARDS}")
    return reward


__all__ = ["GROUP_REWARDS", "REWARDS", "check_reward", "item_rewards", "list_bonus", "rank_gains",
           "rank_penalties", "ranked_rewards"]
