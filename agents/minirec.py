"""MiniRec (Wang et al. 2026): reward-aligned selection of training requests and a curriculum.

A proxy policy (e.g. the SFT policy) rolls out N times per request of the pool; r_bar is the mean
reward. Then

    L_i = minmax(exp(-(r_bar_i - mu)^2 / (2 sigma^2)))       learnability (mu = 0.5, sigma = std r_bar)
    V_i = D_i * (alpha * L_i + R_i)                           value given the selected set S

with R_i the representativeness (alignment of request i's update direction with the pool's mean;
computed elsewhere and passed in) and D_i the distance from request i to S in the policy's
embedding space, divided by the largest such distance. Selection is greedy: the request of
highest V joins S, distances are updated, and so on (the first pick is the highest alpha L + R).
The curriculum cuts the selection into groups (default 64) in pick order and orders each group
easy -> hard (high r_bar first); training follows that order.

Comparison selectors on the same inputs: random, learnability only (top L), and K-center (greedy
max-min distance alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.policy import LLMPolicy, make_rollout_env
from recgym.envs.task import RecGenTask


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array maps to zeros.

    Example:
        >>> minmax(np.array([2.0, 4.0, 3.0])).tolist()
        [0.0, 1.0, 0.5]
    """
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def learnability(mean_rewards: np.ndarray, mu: float = 0.5, sigma: float | None = None) -> np.ndarray:
    """L = minmax(exp(-(r_bar - mu)^2 / (2 sigma^2))); ``sigma`` defaults to the pool's std of r_bar.

    Requests solved every time (too easy) and never (too hard) score lowest.

    Example:
        >>> learnability(np.array([0.0, 0.5, 1.0, 0.25]), sigma=0.25).round(3).tolist()
        [0.0, 1.0, 0.0, 0.545]
    """
    r = np.asarray(mean_rewards, dtype=np.float64)
    s = float(np.std(r)) if sigma is None else float(sigma)
    if s <= 0:
        return np.zeros_like(r)  # every request equally (un)learnable: no preference
    return minmax(np.exp(-((r - mu) ** 2) / (2 * s**2)))


@torch.no_grad()
def proxy_rewards(
    policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, *, rollouts: int = 4, requests_per_batch: int = 64,
    temperature: float = 1.0, seed: int = 0, progress: bool = True,
) -> np.ndarray:
    """r_bar per request of ``rows``: the mean env reward of ``rollouts`` constrained samples each.

    Example:
        >>> # r_bar = proxy_rewards(sft_policy, train_task, np.arange(train_task.num_requests))
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(len(rows))
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    envs = make_rollout_env(task, requests_per_batch * rollouts)
    starts = range(0, len(rows), requests_per_batch)
    for i, start in enumerate(tqdm(starts, desc="proxy rollouts", disable=not progress, leave=False)):
        batch = rows[start:start + requests_per_batch]
        if len(batch) < requests_per_batch:  # the last, smaller batch gets an env of its size
            envs = make_rollout_env(task, len(batch) * rollouts)
        rollout = policy.rollout(envs, group_size=rollouts, rows=batch, temperature=temperature,
                                 generator=generator, seed=seed + i)
        out[start:start + len(batch)] = rollout.rewards.reshape(-1, rollouts).mean(dim=1).cpu().numpy()
    return out


@torch.no_grad()
def request_embeddings(
    policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, *, batch_size: int = 64, progress: bool = True,
) -> np.ndarray:
    """The policy's final hidden state at the last prompt token of each request: (n, hidden) float32.

    Example:
        >>> # emb = request_embeddings(sft_policy, train_task, rows)
    """
    rows = np.asarray(rows, dtype=np.int64)
    parts = []
    for start in tqdm(range(0, len(rows), batch_size), desc="embeddings", disable=not progress, leave=False):
        ids, mask = policy.left_pad(*task.prompt_tokens(rows[start:start + batch_size]))
        hidden, _ = policy._forward(ids, mask, use_cache=False)
        parts.append(hidden[:, -1].float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, policy.model.config.hidden_size), np.float32)


def greedy_select(
    embeddings: np.ndarray, scores: np.ndarray, k: int, *, first: int | None = None
) -> np.ndarray:
    """Greedy diversity-aware selection: repeatedly pick argmax_i D_i * scores_i.

    D_i is the Euclidean distance from i to the nearest selected request divided by the largest
    such distance among the unselected (so D is in [0, 1]); the first pick is ``first`` or
    argmax scores. Ties go to the lower index. Returns the picks in order. Each pick is one
    vectorized pass over the pool (distances to the newest pick only).

    Example:
        >>> emb = np.array([[0.0], [0.1], [5.0], [10.0]])
        >>> greedy_select(emb, np.array([1.0, 0.9, 0.5, 0.2]), 3).tolist()  # 0.5 * 0.5 > 1.0 * 0.2
        [0, 2, 3]
    """
    x = np.asarray(embeddings, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    k = min(int(k), n)
    picks = np.empty(k, dtype=np.int64)
    if k == 0:
        return picks
    nearest = np.full(n, np.inf)
    taken = np.zeros(n, dtype=bool)
    pick = int(np.argmax(s)) if first is None else int(first)
    for t in range(k):  # one pick per iteration; each one is vectorized over the pool
        picks[t] = pick
        taken[pick] = True
        nearest = np.minimum(nearest, np.linalg.norm(x - x[pick], axis=1))
        if t + 1 == k:
            break
        far = nearest[~taken].max()
        d = nearest / far if far > 0 else np.zeros(n)
        value = np.where(taken, -np.inf, d * s)
        pick = int(np.argmax(value))
    return picks


def select(
    method: str, size: int | float, *, embeddings: np.ndarray | None = None, learn: np.ndarray | None = None,
    represent: np.ndarray | None = None, alpha: float = 1.0, seed: int = 0,
) -> np.ndarray:
    """Pick ``size`` requests (a count, or a fraction of the pool when < 1) by ``method``.

    * ``minirec``: :func:`greedy_select` with scores alpha * L + R (needs all three inputs);
    * ``learnability``: the top-L requests;
    * ``kcenter``: greedy max-min distance on the embeddings from a seeded random start;
    * ``random``: a seeded uniform sample.

    Returns pool indices in pick order.

    Example:
        >>> select("random", 0.5, learn=np.zeros(6), seed=1).shape
        (3,)
    """
    sized = next(a for a in (learn, embeddings, represent) if a is not None)
    n = len(sized)
    k = int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < k <= n:
        raise ValueError(f"subset size {size!r} gives {k} requests; the pool has {n}")
    rng = np.random.default_rng(seed)
    if method == "random":
        return rng.choice(n, k, replace=False)
    if method == "learnability":
        return np.argsort(-np.asarray(learn), kind="stable")[:k]
    if method == "kcenter":
        return greedy_select(embeddings, np.ones(n), k, first=int(rng.integers(n)))
    if method == "minirec":
        if embeddings is None or learn is None or represent is None:
            raise ValueError("minirec selection needs embeddings, learnability and representativeness")
        return greedy_select(embeddings, alpha * np.asarray(learn) + np.asarray(represent), k)
    raise ValueError(f"unknown selection method {method!r}: choose minirec, learnability, kcenter or random")


def curriculum(selected: np.ndarray, mean_rewards: np.ndarray, group: int = 64) -> np.ndarray:
    """Training order: the selection cut into groups of ``group`` (pick order), each sorted easy -> hard.

    Easy means a high proxy reward r_bar; ties keep pick order. ``mean_rewards`` is indexed by
    the values in ``selected``.

    Example:
        >>> r_bar = np.array([0, .1, .9, 0, 0, .2, 0, .5])
        >>> curriculum(np.array([1, 5, 7, 2]), r_bar, group=2).tolist()  # groups [1, 5] and [7, 2]
        [5, 1, 2, 7]
    """
    selected = np.asarray(selected, dtype=np.int64)
    r = np.asarray(mean_rewards)[selected]
    group_id = np.arange(len(selected)) // group
    order = np.lexsort((np.arange(len(selected)), -r, group_id))  # by group, then r_bar desc, then pick
    return selected[order]


class CurriculumSampler:
    """A request sampler for :func:`agents.rl.train_rl` that walks a fixed order, batch by batch,
    starting over after the last request (each pass repeats the curriculum).

    Example:
        >>> s = CurriculumSampler(np.array([4, 2, 9]), batch_size=2)
        >>> [s.rows(step).tolist() for step in range(3)]
        [[4, 2], [9, 4], [2, 9]]
    """

    def __init__(self, order: np.ndarray, batch_size: int) -> None:
        self.order = np.asarray(order, dtype=np.int64)
        if len(self.order) == 0:
            raise ValueError("the curriculum is empty")
        self.batch_size = batch_size

    def rows(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return self.order[positions % len(self.order)]


def describe_subset(rows: np.ndarray, mean_rewards: np.ndarray, learn: np.ndarray) -> dict[str, Any]:
    """Statistics of a selected subset (indices into the pool), for logs and results files."""
    rows = np.asarray(rows)
    r = np.asarray(mean_rewards)[rows]
    return {"size": len(rows), "reward_mean": float(r.mean()), "solved_never": float((r == 0).mean()),
            "solved_always": float((r == 1).mean()),
            "learnability_mean": float(np.asarray(learn)[rows].mean())}


__all__ = ["CurriculumSampler", "curriculum", "describe_subset", "greedy_select", "learnability", "minmax",
           "proxy_rewards", "request_embeddings", "select"]
