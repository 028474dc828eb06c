"""HR@K / NDCG@K of LLM policies (constrained beam search) and classic recommenders, one protocol."""

from __future__ import annotations

from dataclasses import is_dataclass, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.parallel import distributed as dist
from recgym.data import Examples
from recgym.envs.task import RecGenTask
from recgym.metrics import KS, first_hit_ranks, hits_from_item_sets, hits_from_ranked, ranking_metrics


def select_rows(num: int, max_requests: int | None, seed: int = 0) -> np.ndarray:
    """All rows, or a seeded sorted sample of ``max_requests`` of them."""
    if max_requests is None or max_requests >= num:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, max_requests, replace=False))


def evaluate(
    policy: Any,
    task: RecGenTask,
    *,
    beam: int = 50,
    ks: tuple[int, ...] | None = None,
    batch_size: int = 16,
    max_requests: int | None = None,
    length_normalize: bool = False,
    scoring: str | None = None,
    seed: int = 0,
    progress: bool = True,
    distributed: bool | None = None,
    per_request: bool = False,
    exclude_history: bool = False,
) -> dict[str, Any]:
    """Score an :class:`~agents.model.policy.LLMPolicy` on ``task``'s split by constrained beam search.

    The reference protocol (D3 / ReRe / MiniOneRec): beam width 50, beams scored with the
    full-vocabulary log-softmax with disallowed tokens masked and no renormalisation
    (``scoring=None`` follows the policy's objective, ``"full"`` by default), no length penalty,
    HR/NDCG@K for every K in ``ks`` (default: those of {1, 3, 5, 10, 20, 50} up to ``beam``).
    Each request's top ``max(ks)`` distinct outputs are ranked; an output that denotes several
    items (shared title / SID) is a hit when the target is among them. ``invalid_rate`` is the
    share of the top-``max(ks)`` slots that hold no catalogue item (MiniOneRec's ``CC``; 0 unless
    the catalogue has fewer items than ``max(ks)``), and ``scoring`` / ``beam`` are recorded.

    ``policy`` may also be any agent that searches the prefix tree from the request itself rather
    than from its prompt: one with ``beam_search_rows(task, rows, width=..., k=...) -> (terminals,
    scores)`` (e.g. :class:`~agents.baselines.maskable_ppo.MaskablePPOAgent`); it is scored the
    same way.

    Under ``torchrun`` (``distributed=None``: whenever a process group of several ranks is
    initialised, :mod:`agents.parallel.distributed`) this is a collective that every rank calls: the
    requests are cut into the batches one process would search (``batch_size`` each), each rank
    searches a contiguous share of those batches, and the hits are gathered exactly, so every rank
    returns the metrics one process returns on the same requests. ``distributed=False`` scores
    every request on this rank alone.

    ``exclude_history=True`` never recommends an item of the request's own history window: the
    search prunes them (``beam_search(..., exclude_items=...)``), so the beams go to other items,
    as SASRec's paper and RecBole's full ranking evaluate (on Games no request's target is in its
    history). Off by default: the reference protocol ranks every catalogue item. Recorded as
    ``history_excluded`` in the metrics.

    ``per_request=True`` adds ``rows`` (the test rows scored, :func:`select_rows`) and
    ``first_hit_ranks`` (per row, the 0-based rank of its first hit among the top ``max(ks)``,
    -1 for none; :func:`recgym.metrics.request_gains` turns them into per-request HR/NDCG@K, and
    :func:`recgym.metrics.paired_bootstrap` compares two agents on the same rows).

    Example:
        >>> # evaluate(policy, RecGenTask(dataset, split="test", tokenizer=policy.items), beam=20)
    """
    if hasattr(getattr(policy, "items", None), "catalogue"):  # an LLM policy: same catalogue as the task?
        from agents.training.runs import check_policy_task

        check_policy_task(policy.items, task)
    ks = tuple(k for k in KS if k <= beam) if ks is None else tuple(ks)
    if not ks:
        raise ValueError(f"beam={beam}: the beam width must be at least 1")
    k = max(ks)
    if beam < k:
        raise ValueError(f"beam={beam} must be at least max(ks)={k}")
    searching_rows = hasattr(policy, "beam_search_rows")
    if scoring is None:
        scoring = getattr(policy, "objective", "full")
    rows = select_rows(task.num_requests, max_requests, seed)
    hits, missing = request_hits(policy, task, rows, beam=beam, k=k, batch_size=batch_size,
                                 length_normalize=length_normalize, scoring=scoring, progress=progress,
                                 distributed=distributed, exclude_history=exclude_history)
    out: dict[str, Any] = dict(ranking_metrics(hits, ks))
    out["requests"] = len(rows)
    out["invalid_rate"] = missing / max(1, len(rows) * k)
    if not searching_rows:
        out["scoring"] = scoring
    out["beam"] = beam
    out["history_excluded"] = bool(exclude_history)
    if per_request:
        _add_requests(out, rows, hits)
    return out


def _add_requests(out: dict[str, Any], rows: np.ndarray, hits: np.ndarray) -> None:
    out["rows"] = [int(r) for r in rows]
    out["first_hit_ranks"] = first_hit_ranks(hits).tolist()


def request_hits(
    policy: Any,
    task: RecGenTask,
    rows: np.ndarray,
    *,
    beam: int,
    k: int,
    batch_size: int = 16,
    length_normalize: bool = False,
    scoring: str = "full",
    progress: bool = True,
    distributed: bool | None = None,
    exclude_history: bool = False,
) -> tuple[np.ndarray, int]:
    """Per request of ``rows``: which of its top-``k`` beam outputs hit the target, and the missing slots.

    Returns ``(hits [len(rows), k] bool, missing)``: ``hits[i, j]`` is True when the j-th ranked
    output for request ``rows[i]`` denotes its target; ``missing`` counts slots that hold no item.
    The requests are searched ``batch_size`` at a time; under ``torchrun`` (see :func:`evaluate`)
    each rank searches a contiguous share of those batches and every rank returns all rows, in
    order, exactly as one process computes them.

    Example:
        >>> # hits, missing = request_hits(policy, task, np.arange(32), beam=20, k=20)
    """
    searching_rows = hasattr(policy, "beam_search_rows")
    sharded = dist.is_distributed() if distributed is None else bool(distributed and dist.is_distributed())
    # Whole batches of one process are the unit of sharding: each request is searched in the same
    # batch (same padding, same numbers) whatever the number of ranks.
    starts = np.arange(0, len(rows), batch_size)
    mine = starts[dist.shard_slice(len(starts))] if sharded else starts
    first = int(mine[0]) if len(mine) else len(rows)
    count = min(len(rows), int(mine[-1]) + batch_size) - first if len(mine) else 0
    hits = np.zeros((count, k), dtype=bool)
    missing = 0
    for start in tqdm(mine, desc=f"eval {task.split}", disable=not progress or not dist.is_main(),
                      leave=False):
        batch = rows[start:start + batch_size]
        excluded = {"exclude_items": task.examples.history[batch]} if exclude_history else {}  # -1 padded
        if searching_rows:
            terminals, _ = policy.beam_search_rows(task, batch, width=beam, k=k, **excluded)
        else:
            terminals, _ = policy.beam_search(*task.prompt_tokens(batch), width=beam, k=k,
                                              length_normalize=length_normalize, scoring=scoring, **excluded)
        missing += int((terminals < 0).sum())
        # Missing entries (-1) read as the root, which denotes no item.
        offsets, values = task.tree.items_batch(np.maximum(terminals, task.tree.root).reshape(-1))
        at = int(start) - first
        hits[at:at + len(batch)] = hits_from_item_sets(
            offsets, values, task.examples.target[batch], (len(batch), k))
    if sharded:
        hits = dist.gather_rows(hits)
        missing = int(dist.all_sum(missing))
    return hits, missing


def without_history(ranked: np.ndarray, examples: Examples, k: int) -> np.ndarray:
    """The first ``k`` items of each ranked list (``[n, >= k]``) that are not in the request's history
    window, in rank order (-1 where fewer remain): a ranker's list with history excluded.

    Example:
        >>> ex = Examples.from_lists(histories=[[4, 2], [1]], targets=[3, 0], max_history=2)
        >>> without_history(np.array([[2, 3, 4, 5], [0, 1, 2, 3]]), ex, 2).tolist()
        [[3, 5], [0, 2]]
    """
    real = np.arange(examples.max_history) < examples.history_len[:, None]
    seen = (ranked[:, :, None] == np.where(real, examples.history, -1)[:, None, :]).any(axis=2)
    order = np.argsort(seen, axis=1, kind="stable")[:, :k]  # unseen first, in rank order
    out = np.take_along_axis(ranked, order, axis=1)
    return np.where(np.take_along_axis(seen, order, axis=1), -1, out)


def evaluate_ranker(
    model: Any, examples: Examples, *, ks: tuple[int, ...] = KS, max_requests: int | None = None,
    seed: int = 0, per_request: bool = False, exclude_history: bool = False,
) -> dict[str, Any]:
    """Score a classic recommender (``rank(examples, k) -> (n, k)`` item ids) on the same protocol.

    ``per_request=True`` adds ``rows`` and ``first_hit_ranks`` (among the top ``max(ks)``, -1 for
    none), as :func:`evaluate` does. ``exclude_history=True``: the model ranks ``max(ks)`` plus
    the history window's length, and the request's history items are dropped from its list
    (:func:`without_history`), as :func:`evaluate` prunes them from a policy's search. The flag
    decides for every model: one that would exclude them itself (``model.config.exclude_history``,
    SASRec's default) ranks with that switched off here, then gets it back.

    Example:
        >>> # evaluate_ranker(PopularityRecommender().fit(ds.train, n), ds.test, per_request=True)
    """
    rows = select_rows(len(examples), max_requests, seed)
    subset = examples.subset(rows)
    k = max(ks)
    config = getattr(model, "config", None)
    own = is_dataclass(config) and getattr(config, "exclude_history", False)
    if own:
        model.config = replace(config, exclude_history=False)
    try:
        if exclude_history:
            ranked = without_history(model.rank(subset, k + subset.max_history), subset, k)
        else:
            ranked = model.rank(subset, k)
    finally:
        if own:
            model.config = config
    hits = hits_from_ranked(ranked, subset.target)
    out: dict[str, Any] = dict(ranking_metrics(hits, ks))
    out["requests"] = len(rows)
    out["history_excluded"] = bool(exclude_history)
    if per_request:
        _add_requests(out, rows, hits)
    return out
