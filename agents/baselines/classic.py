"""Count-based baselines: item popularity and a first-order item-to-item transition model.

Both share one interface: ``fit(train_examples, num_items)`` then ``rank(examples, k)`` returning
an (n, k) array of item ids, best first, that :func:`recgym.metrics.hits_from_ranked` scores.
"""

from __future__ import annotations

import numpy as np

from recgym.data import Examples


class PopularityRecommender:
    """Ranks every request by how often each item was a training target.

    Example:
        >>> ex = Examples.from_lists([[0], [0], [1]], [2, 2, 1], max_history=2)
        >>> PopularityRecommender().fit(ex, num_items=3).rank(ex, k=2).tolist()
        [[2, 1], [2, 1], [2, 1]]
    """

    def fit(self, train: Examples, num_items: int, valid: Examples | None = None) -> PopularityRecommender:
        """Count targets (``valid`` is accepted for a common interface and not used)."""
        counts = np.bincount(train.target, minlength=num_items)
        # Stable sort on -count: ties go to the smaller id, so the ranking is deterministic.
        self.order_ = np.argsort(-counts, kind="stable")
        self.counts_ = counts
        return self

    def rank(self, examples: Examples, k: int) -> np.ndarray:
        return np.broadcast_to(self.order_[:k], (len(examples), min(k, len(self.order_)))).copy()


class TransitionRecommender:
    """First-order Markov model: items that most often followed the request's last item.

    Successors are ranked by transition count in the training histories and targets; the list is
    filled up with popular items that are not already in it.

    Example:
        >>> ex = Examples.from_lists([[0], [0], [1]], [1, 1, 2], max_history=2)
        >>> TransitionRecommender().fit(ex, num_items=3).rank(ex, k=2).tolist()
        [[1, 2], [1, 2], [2, 1]]
    """

    def fit(
        self, train: Examples, num_items: int, valid: Examples | None = None, max_successors: int = 50,
    ) -> TransitionRecommender:
        """Count transitions (``valid`` is accepted for a common interface and not used)."""
        h, n = train.history, train.history_len
        # Pairs (a -> b): consecutive history items, and the last history item -> target.
        inner = (np.arange(h.shape[1] - 1) < (n[:, None] - 1))
        src = np.concatenate([h[:, :-1][inner], h[np.arange(len(h)), np.maximum(n - 1, 0)][n > 0]])
        dst = np.concatenate([h[:, 1:][inner], train.target[n > 0]])
        pair = src.astype(np.int64) * num_items + dst
        keys, counts = np.unique(pair, return_counts=True)
        a, b = keys // num_items, keys % num_items
        order = np.lexsort((b, -counts, a))  # by source, then count descending, then id
        a, b = a[order], b[order]
        rank_in_src = np.arange(len(a)) - np.searchsorted(a, a)
        keep = rank_in_src < max_successors
        width = max_successors
        table = np.full((num_items, width), -1, dtype=np.int64)
        table[a[keep], rank_in_src[keep]] = b[keep]
        self.successors_ = table
        self.popularity_ = PopularityRecommender().fit(train, num_items)
        self.num_items_ = num_items
        return self

    def rank(self, examples: Examples, k: int) -> np.ndarray:
        n = len(examples)
        last = examples.history[np.arange(n), np.maximum(examples.history_len - 1, 0)]
        cand = np.where((examples.history_len > 0)[:, None], self.successors_[last, :k], -1)
        # Fill the empty slots with the most popular items not already listed, in order.
        pop = self.popularity_.order_[: 2 * k]
        fill_ok = ~(pop[None, :, None] == cand[:, None, :]).any(axis=2)
        fill_rank = np.cumsum(fill_ok, axis=1) - 1
        n_have = (cand >= 0).sum(axis=1)
        slot = n_have[:, None] + fill_rank
        out = cand.copy()
        rows, cols = np.nonzero(fill_ok & (slot < k))
        out[rows, slot[rows, cols]] = pop[cols]
        return out
