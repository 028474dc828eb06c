"""HR@K / NDCG@K of LLM policies (constrained beam search) and classic recommenders, one protocol."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recgym.data import Examples
from recgym.envs.task import RecGenTask
from recgym.metrics import KS, hits_from_item_sets, hits_from_ranked, ranking_metrics


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
) -> dict[str, float]:
    """Score an :class:`~agents.policy.LLMPolicy` on ``task``'s split by constrained beam search.

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

    Example:
        >>> # evaluate(policy, RecGenTask(dataset, split="test", tokenizer=policy.items), beam=20)
    """
    if hasattr(getattr(policy, "items", None), "catalogue"):  # an LLM policy: same catalogue as the task?
        from agents.runs import check_policy_task

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
    hits = np.zeros((len(rows), k), dtype=bool)
    missing = 0
    for start in tqdm(range(0, len(rows), batch_size), desc=f"eval {task.split}", disable=not progress,
                      leave=False):
        batch = rows[start:start + batch_size]
        if searching_rows:
            terminals, _ = policy.beam_search_rows(task, batch, width=beam, k=k)
        else:
            terminals, _ = policy.beam_search(*task.prompt_tokens(batch), width=beam, k=k,
                                              length_normalize=length_normalize, scoring=scoring)
        missing += int((terminals < 0).sum())
        # Missing entries (-1) read as the root, which denotes no item.
        offsets, values = task.tree.items_batch(np.maximum(terminals, task.tree.root).reshape(-1))
        hits[start:start + len(batch)] = hits_from_item_sets(
            offsets, values, task.examples.target[batch], (len(batch), k))
    out = ranking_metrics(hits, ks)
    out["requests"] = len(rows)
    out["invalid_rate"] = missing / max(1, len(rows) * k)
    if not searching_rows:
        out["scoring"] = scoring
    out["beam"] = beam
    return out


def evaluate_ranker(
    model: Any, examples: Examples, *, ks: tuple[int, ...] = KS, max_requests: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Score a classic recommender (``rank(examples, k) -> (n, k)`` item ids) on the same protocol."""
    rows = select_rows(len(examples), max_requests, seed)
    subset = examples.subset(rows)
    out = ranking_metrics(hits_from_ranked(model.rank(subset, max(ks)), subset.target), ks)
    out["requests"] = len(rows)
    return out
