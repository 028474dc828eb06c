"""Semantic IDs (SIDs) for any catalogue: residual k-means over item embeddings, collision handling,
LC-Rec ``index.json`` files, and applying such a file to a :class:`~recgym.data.Dataset`.

An item's SID is a short code path ``(c_1, ..., c_L)``, written ``<a_c1><b_c2>...`` (the LC-Rec /
MiniOneRec token format). :func:`build_sid_index` makes one from item embeddings (numpy only; the
text encoders live in :mod:`agents.model.encoders`):

1. **RQ-KMeans** (:func:`residual_kmeans`): level 1 is k-means on the embeddings, level l on the
   residuals left by levels 1..l-1 (``r_l = r_{l-1} - C_{l-1}[c_{l-1}]``), L levels of K codes.
   ``balanced=True`` uses :func:`kmeans` with a capacity-bounded assignment (every cluster holds
   ``floor(N/K)`` or ``ceil(N/K)`` items), as MiniOneRec's constrained RQ-KMeans.
2. **Collisions**: items with the same code path get distinct SIDs (unless ``collisions="none"``),
   either by an extra level that numbers them (:func:`extra_level`, TIGER; MiniOneRec's
   ``deal_with_deduplicate``) or by re-assigning their last-level codes with an entropic optimal
   transport plan under one-item-per-code capacity (:func:`sinkhorn_decollide`, the LETTER /
   MiniOneRec de-collision, here exact in one pass).
3. A report (:func:`sid_stats`: collision rate, code utilisation per level) saved next to the
   ``index.json`` (:func:`write_sid_index`).

Defaults follow MiniOneRec (``AkaliKong/MiniOneRec``, ``rq/``): 3 levels of 256 codes
(``rqkmeans_faiss.py --num_levels 3 --codebook_size 256``; ``rqkmeans_constrained.sh K=256 L=3``),
100 k-means iterations (``--max_iter 100``), tolerance 1e-4 (``residual_kmeans_constrained``),
and for the last-level Sinkhorn ``sk_epsilon = 0.003``, ``sk_iters = 100`` with distances centred
and scaled to [-1, 1] (LETTER's ``center_distance_for_constraint``). MiniOneRec seeds with 42 and
restarts constrained k-means 3 times (``n_init=3``); here ``seed=0`` and ``n_init=1`` by default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recgym.data.dataset import Catalogue, DataFormatError, Dataset, parse_sid

__all__ = [
    "COLLISIONS", "MAX_SID_LEVELS", "KMeansResult", "RQResult", "SIDIndex",
    "build_sid_index", "capacitated_assignment", "extra_level", "kmeans", "kmeans_plus_plus",
    "random_sids", "read_sid_index", "residual_kmeans", "sid_report_path", "sid_stats",
    "sinkhorn_decollide", "titles_fingerprint", "with_sid_index", "write_sid_index",
]

COLLISIONS = ("extra_level", "sinkhorn", "none")
MAX_SID_LEVELS = 26  # SID tokens name their level by a letter: <a_..> .. <z_..>
ATOMIC = "atomic"  # with_sid_index(ds, ATOMIC): one token per item, <a_i> for item i
_CHUNK_ROWS = 32768  # rows of a distance matrix computed at once (bounds memory for big catalogues)
_SINKHORN_CELLS = 1 << 22  # (groups x movers x codes) cells per batched Sinkhorn call
PathLike = str | os.PathLike[str]


# -- k-means -----------------------------------------------------------------------------------


def _sq_dists(x: np.ndarray, centers: np.ndarray, x_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances (n, k), from ``|x|^2 - 2 x.c + |c|^2`` (one matmul), clipped at 0."""
    if x_sq is None:
        x_sq = np.einsum("ij,ij->i", x, x)
    c_sq = np.einsum("ij,ij->i", centers, centers)
    out = np.empty((len(x), len(centers)), dtype=np.float32)
    for a in range(0, len(x), _CHUNK_ROWS):
        b = min(a + _CHUNK_ROWS, len(x))
        block = x[a:b] @ centers.T
        block *= -2.0
        block += x_sq[a:b, None]
        block += c_sq[None, :]
        out[a:b] = block
    np.maximum(out, 0.0, out=out)
    return out


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indexes of k seed points by k-means++ (D^2 sampling; uniform when all distances are 0).

    Example:
        >>> x = np.array([[0.0, 0.0], [0.0, 0.1], [10.0, 10.0]], dtype=np.float32)
        >>> sorted(x[kmeans_plus_plus(x, 2, np.random.default_rng(0))][:, 0].tolist())[-1]
        10.0
    """
    n = len(x)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    x_sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    d2 = np.maximum(x_sq - 2.0 * (x @ x[chosen[0]]) + x_sq[chosen[0]], 0.0)
    for j in range(1, k):  # one step per centre (k steps), each a vectorised pass over the points
        cum = np.cumsum(d2)
        if cum[-1] <= 0.0:
            chosen[j] = rng.integers(n)
        else:
            chosen[j] = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), n - 1)
        np.minimum(d2, np.maximum(x_sq - 2.0 * (x @ x[chosen[j]]) + x_sq[chosen[j]], 0.0), out=d2)
    return chosen


def capacitated_assignment(dist: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Assign each row to a column with at most ``capacity[k]`` rows per column: the stable matching
    in which rows propose to columns in order of distance and each column keeps its nearest rows
    (Gale-Shapley with capacities). Ties go to the lower row id. Needs ``capacity.sum() >= n``.

    Every round is vectorised: all unassigned rows propose at once and each column keeps its
    ``capacity`` nearest among its holders and proposers.

    Example:
        >>> d = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 3.0]])
        >>> capacitated_assignment(d, np.array([1, 2])).tolist()
        [0, 1, 1]
    """
    dist = np.asarray(dist)
    if dist.ndim != 2:
        raise ValueError(f"dist must be a 2-D (rows, columns) array, got shape {dist.shape}")
    n, k = dist.shape
    capacity = np.asarray(capacity, dtype=np.int64)
    if capacity.shape != (k,) or (capacity < 0).any():
        raise ValueError(f"capacity must be {k} non-negative ints, got {capacity!r}")
    if capacity.sum() < n:
        raise ValueError(f"total capacity {int(capacity.sum())} < {n} rows: not every row can be assigned")
    # Preference lists: the nearest `top` columns of every row (most rows never look further); a
    # row that runs out gets its full sorted list.
    top = min(k, 16)
    prefs = np.empty((n, k), dtype=np.int64)
    near = np.argpartition(dist, top - 1, axis=1)[:, :top] if top < k else np.tile(np.arange(k), (n, 1))
    near_dist = np.take_along_axis(dist, near, axis=1)
    prefs[:, :top] = np.take_along_axis(near, np.lexsort((near, near_dist), axis=1), axis=1)
    full = np.zeros(n, dtype=bool) if top < k else np.ones(n, dtype=bool)
    next_pref = np.zeros(n, dtype=np.int64)
    label = np.full(n, -1, dtype=np.int64)
    free = np.arange(n)
    while free.size:
        out_of_list = free[(next_pref[free] >= top) & ~full[free]]
        if out_of_list.size:
            prefs[out_of_list] = np.argsort(dist[out_of_list], axis=1, kind="stable")
            full[out_of_list] = True
        proposed = prefs[free, next_pref[free]]
        next_pref[free] += 1
        touched = np.zeros(k, dtype=bool)
        touched[proposed] = True
        assigned = np.flatnonzero(label >= 0)
        held = assigned[touched[label[assigned]]]
        rows = np.concatenate([held, free])
        cols = np.concatenate([label[held], proposed])
        order = np.lexsort((rows, dist[rows, cols], cols))
        rows, cols = rows[order], cols[order]
        first = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        rank = np.arange(len(cols)) - np.repeat(first, np.diff(np.r_[first, len(cols)]))
        keep = rank < capacity[cols]
        label[rows[keep]] = cols[keep]
        label[rows[~keep]] = -1
        free = np.sort(rows[~keep])
    return label


def _balanced_labels(dist: np.ndarray) -> np.ndarray:
    """Capacity-bounded assignment: sizes ``floor(n/k)`` or ``ceil(n/k)``; the ``n mod k`` larger
    quotas go to the columns most rows are nearest to."""
    n, k = dist.shape
    q, r = divmod(n, k)
    capacity = np.full(k, q, dtype=np.int64)
    if r:
        demand = np.bincount(dist.argmin(axis=1), minlength=k)
        capacity[np.argsort(-demand, kind="stable")[:r]] += 1
    return capacitated_assignment(dist, capacity)


def _cluster_means(
    x: np.ndarray, labels: np.ndarray, k: int, previous: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster means (previous centre where a cluster is empty) and sizes, without a per-row loop."""
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    nonempty = counts > 0
    centers = previous.copy()
    if nonempty.any():
        sums = np.add.reduceat(x[order].astype(np.float64), starts[nonempty], axis=0)
        centers[nonempty] = (sums / counts[nonempty, None]).astype(np.float32)
    return centers, counts


@dataclass
class KMeansResult:
    """Labels (n,), centres (k, d), inertia (sum of squared distances to the own centre), iterations."""

    labels: np.ndarray
    centers: np.ndarray
    inertia: float
    iterations: int


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    balanced: bool = False,
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    seed: int | np.random.SeedSequence = 0,
    progress: tqdm | None = None,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding; ``balanced=True`` bounds every cluster's size.

    Balanced: each assignment step is :func:`capacitated_assignment` with quotas ``floor(n/k)`` /
    ``ceil(n/k)`` (tighter than MiniOneRec's ``[n//k - 1, n//k + 1]``). Unbalanced: an empty
    cluster is re-seeded at the point farthest from its centre. Stops when the labels repeat or
    the centres move less than ``tol`` times the mean feature variance (as scikit-learn), after
    ``max_iter`` iterations at most; the best of ``n_init`` seeded runs (lowest inertia) wins.

    Example:
        >>> x = np.array([[0, 0], [0, 1], [9, 9], [9, 10]], dtype=np.float32)
        >>> res = kmeans(x, 2, seed=0)
        >>> res.labels[0] == res.labels[1] != res.labels[2] == res.labels[3], res.inertia
        (np.True_, 1.0)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"x must be a non-empty (n, d) array, got shape {x.shape}")
    n = len(x)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in 1..{n} (the number of points), got {k!r}")
    if max_iter < 1 or n_init < 1:
        raise ValueError(f"max_iter and n_init must be >= 1, got {max_iter} and {n_init}")
    x_sq = np.einsum("ij,ij->i", x, x)
    tol_abs = float(tol) * float(np.mean(np.var(x, axis=0, dtype=np.float64)))
    assign = _balanced_labels if balanced else (lambda d: d.argmin(axis=1))
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    best: KMeansResult | None = None
    for child in root.spawn(n_init):
        rng = np.random.default_rng(child)
        centers = x[kmeans_plus_plus(x, int(k), rng)].copy()
        labels = np.full(n, -1, dtype=np.int64)
        iterations = 0
        while iterations < max_iter:
            iterations += 1
            dist = _sq_dists(x, centers, x_sq)
            new = assign(dist)
            moved, counts = _cluster_means(x, new, k, centers)
            empty = np.flatnonzero(counts == 0)
            if empty.size:  # unbalanced only: re-seed at the worst-fitted points
                far = np.argsort(-dist[np.arange(n), new], kind="stable")[: empty.size]
                moved[empty] = x[far]
            shift = float(np.sum((moved.astype(np.float64) - centers) ** 2))
            done = not empty.size and (np.array_equal(new, labels) or shift <= tol_abs)
            centers, labels = moved, new
            if progress is not None:
                progress.update(1)
            if done:
                break
        dist = _sq_dists(x, centers, x_sq)
        labels = assign(dist).astype(np.int64)
        inertia = float(dist[np.arange(n), labels].sum(dtype=np.float64))
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels, centers, inertia, iterations)
    assert best is not None
    return best


# -- residual quantisation ---------------------------------------------------------------------


@dataclass
class RQResult:
    """Codes (n, L), codebooks (one (K_l, d) array per level) and the final residual (n, d)."""

    codes: np.ndarray
    codebooks: list[np.ndarray]
    residual: np.ndarray

    def residual_before(self, level: int) -> np.ndarray:
        """The residual that level ``level`` (0-based) quantised."""
        out = self.residual.copy()
        for lvl in range(level, len(self.codebooks)):
            out += self.codebooks[lvl][self.codes[:, lvl]]
        return out


def _codes_per_level(codes: int | Sequence[int], levels: int) -> list[int]:
    sizes = [int(codes)] * levels if isinstance(codes, (int, np.integer)) else [int(c) for c in codes]
    if len(sizes) != levels or any(c < 1 for c in sizes):
        raise ValueError(f"codes must be a positive int or {levels} positive ints (one per level), "
                         f"got {codes!r}")
    return sizes


def residual_kmeans(
    x: np.ndarray,
    levels: int = 3,
    codes: int | Sequence[int] = 256,
    *,
    balanced: bool = False,
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> RQResult:
    """RQ-KMeans: k-means on the embeddings, then on what each level leaves (the residual).

    Defaults as MiniOneRec: 3 levels of 256 codes, 100 iterations, tol 1e-4. Level l is seeded by
    the l-th child of ``np.random.SeedSequence(seed)``, so the result depends on ``seed`` only.

    Example:
        >>> x = np.array([[10, 1], [10, -1], [-10, 1], [-10, -1]], dtype=np.float32)
        >>> rq = residual_kmeans(x, levels=2, codes=2, progress=False)
        >>> np.abs(rq.residual).max() < 1e-6, len(np.unique(rq.codes, axis=0))
        (np.True_, 4)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"embeddings must be a non-empty (items, dim) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"embeddings of item {bad} are not finite (NaN or inf): check the encoder output")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")
    sizes = _codes_per_level(codes, levels)
    if max(sizes) > len(x):
        raise ValueError(f"codes={max(sizes)} per level but only {len(x)} items: pass codes <= {len(x)}")
    residual = x.copy()
    out = np.empty((len(x), levels), dtype=np.int32)
    books: list[np.ndarray] = []
    bar = tqdm(total=levels * max_iter * n_init, desc="RQ-KMeans", unit="iter", disable=not progress)
    for lvl, child in enumerate(np.random.SeedSequence(int(seed)).spawn(levels)):
        bar.set_postfix(level=f"{lvl + 1}/{levels}")
        res = kmeans(residual, sizes[lvl], balanced=balanced, max_iter=max_iter, tol=tol, n_init=n_init,
                     seed=child, progress=bar)
        bar.n = (lvl + 1) * max_iter * n_init  # levels that converged early jump to their share
        bar.refresh()
        out[:, lvl] = res.labels
        books.append(res.centers)
        residual -= res.centers[res.labels]
    bar.close()
    return RQResult(out, books, residual)


# -- collisions --------------------------------------------------------------------------------


def _group_rank(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each row among identical rows in row order, size of its group)."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    first = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - np.repeat(first, np.diff(np.r_[first, len(codes)]))
    return rank, counts[inverse]


def extra_level(codes: np.ndarray) -> np.ndarray:
    """TIGER's de-collision: append a level numbering the items that share a code path (0, 1, ...
    in item order; 0 for items without a collision).

    Example:
        >>> extra_level(np.array([[0, 1], [0, 1], [2, 3], [0, 1]])).tolist()
        [[0, 1, 0], [0, 1, 1], [2, 3, 0], [0, 1, 2]]
    """
    codes = np.asarray(codes)
    rank, _ = _group_rank(codes)
    return np.hstack([codes, rank[:, None].astype(codes.dtype)])


def _centred(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """LETTER's ``center_distance_for_constraint`` per group: valid costs scaled to [-1, 1]."""
    big = np.where(valid, cost, -np.inf).max(axis=(1, 2), keepdims=True)
    small = np.where(valid, cost, np.inf).min(axis=(1, 2), keepdims=True)
    middle = (big + small) / 2
    return (cost - middle) / (big - middle + 1e-5)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def _sinkhorn_assign(
    cost: np.ndarray, valid_rows: np.ndarray, free_codes: np.ndarray, epsilon: float, iters: int
) -> np.ndarray:
    """Distinct codes for the valid rows of each group (G, M, K): entropic transport with one unit per
    row and capacity one per free code (a dummy row takes the unused codes), then greedy rounding.

    Log-domain Sinkhorn on the dual potentials f (rows) and g (codes), with epsilon scaling: the
    temperature falls geometrically from 1 to ``epsilon`` over the first half of the iterations
    (warm-started potentials), so small temperatures converge in ``iters`` steps.
    """
    g, m, k = cost.shape
    valid = valid_rows[:, :, None] & free_codes[:, None, :]
    c = np.where(valid, _centred(cost, valid), np.inf)
    c = np.concatenate([c, np.where(free_codes, 0.0, np.inf)[:, None, :]], axis=1)  # the dummy row
    movers = valid_rows.sum(axis=1)
    with np.errstate(divide="ignore"):
        log_a = np.concatenate([np.where(valid_rows, 0.0, -np.inf),
                                np.log(free_codes.sum(axis=1) - movers)[:, None]], axis=1)
    rows_ok = np.isfinite(log_a)
    f = np.zeros((g, m + 1))
    pot = np.zeros((g, k))
    decay = min(epsilon, 1.0) ** (1.0 / max(1, iters // 2))
    eps = 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf on empty rows / taken codes
        for step in range(iters):
            eps = max(epsilon, decay ** (step + 1))
            f = np.where(rows_ok, eps * (log_a - _logsumexp((pot[:, None, :] - c) / eps, axis=2)), -np.inf)
            pot = np.where(free_codes, -eps * _logsumexp((f[:, :, None] - c) / eps, axis=1), -np.inf)
        plan = (f[:, :m, None] + pot[:, None, :] - c[:, :m]) / eps
    # Greedy rounding on the plan; valid cells stay above every invalid one even if the plan underflows.
    score = np.where(valid, np.where(np.isfinite(plan), plan, -1e300), -np.inf)
    out = np.full((g, m), -1, dtype=np.int64)
    groups = np.arange(g)
    for step in range(m):  # one row per group per step: at most M steps, each vectorised over groups
        active = groups[movers > step]
        flat = score[active].reshape(len(active), -1).argmax(axis=1)
        r, c = np.divmod(flat, k)
        out[active, r] = c
        score[active, r, :] = -np.inf
        score[active, :, c] = -np.inf
    return out


def sinkhorn_decollide(
    codes: np.ndarray,
    residual: np.ndarray,
    codebook: np.ndarray,
    *,
    epsilon: float = 0.003,
    iters: int = 100,
) -> np.ndarray:
    """Give colliding items distinct last-level codes (LETTER / MiniOneRec de-collision).

    Items whose full code path is unique keep it. In each prefix (the first L-1 codes) that holds
    colliding items, those items are re-assigned among the last-level codes no other item of the
    prefix uses, by an entropic optimal-transport plan (Sinkhorn, log domain) between the items'
    ``residual`` (what the last level quantises) and the ``codebook`` rows, with one unit per item
    and capacity one per code, rounded greedily so no code is taken twice. ``epsilon`` and
    ``iters`` are LETTER's ``sk_epsilon`` / ``sk_iters`` (MiniOneRec: 0.003 and 100) on distances
    scaled to [-1, 1]. Groups are solved together in padded batches.

    Raises ValueError when a prefix holds more items than the last level has codes.

    Example:
        >>> book = np.array([[0.0], [1.0], [2.0]])
        >>> codes = np.array([[0, 0], [0, 0], [1, 0]])  # items 0 and 1 collide
        >>> sinkhorn_decollide(codes, np.array([[0.1], [0.2], [0.0]]), book).tolist()
        [[0, 0], [0, 1], [1, 0]]
    """
    codes = np.asarray(codes)
    residual = np.asarray(residual, dtype=np.float32)
    codebook = np.asarray(codebook, dtype=np.float32)
    n, levels = codes.shape
    k = len(codebook)
    if residual.shape != (n, codebook.shape[1]):
        raise ValueError(f"residual must have shape ({n}, {codebook.shape[1]}), got {residual.shape}")
    _, group_size = _group_rank(codes)
    colliding = np.flatnonzero(group_size > 1)
    out = codes.copy()
    if not colliding.size:
        return out
    prefix = codes[:, :-1] if levels > 1 else np.zeros((n, 1), codes.dtype)
    _, prefix_id = np.unique(prefix, axis=0, return_inverse=True)
    prefix_id = prefix_id.reshape(-1)
    groups, movers_per_group = np.unique(prefix_id[colliding], return_counts=True)
    slot = np.full(prefix_id.max() + 1, -1, dtype=np.int64)
    slot[groups] = np.arange(len(groups))
    members = np.flatnonzero(slot[prefix_id] >= 0)
    fixed = members[group_size[members] == 1]
    free = np.ones((len(groups), k), dtype=bool)
    free[slot[prefix_id[fixed]], codes[fixed, -1]] = False
    shortfall = np.flatnonzero(movers_per_group > free.sum(axis=1))
    if shortfall.size:
        g = int(groups[shortfall[0]])
        example = int(colliding[prefix_id[colliding] == g][0])
        size = int((prefix_id == g).sum())
        raise ValueError(
            f"the prefix {codes[example, :-1].tolist()} holds {size} items but the last level has only {k} "
            f"codes, so Sinkhorn de-collision cannot make them distinct: use collisions='extra_level', "
            f"more codes or more levels")
    # movers sorted by group, then item id; their row inside the group's block
    order = np.lexsort((colliding, slot[prefix_id[colliding]]))
    movers = colliding[order]
    mover_group = slot[prefix_id[movers]]
    first = np.r_[0, np.cumsum(movers_per_group)[:-1]]
    row_in_group = np.arange(len(movers)) - first[mover_group]
    # Candidate codes: in an optimal assignment of m items each item gets one of its m nearest free
    # codes (m - 1 other items can block at most m - 1 of them), so a group needs only the union
    # of those (at most m^2 codes instead of K), which keeps the Sinkhorn problems small.
    dist = _sq_dists(residual[movers], codebook).astype(np.float64)
    m_max = int(movers_per_group.max())
    ranked = np.argsort(np.where(free[mover_group], dist, np.inf), axis=1, kind="stable")[:, :m_max]
    take = np.arange(m_max)[None, :] < movers_per_group[mover_group][:, None]
    candidate = np.zeros((len(groups), k), dtype=bool)
    candidate[np.broadcast_to(mover_group[:, None], ranked.shape)[take], ranked[take]] = True
    width = candidate.sum(axis=1)
    # Groups with the same (movers, candidates) shape are solved together, without padding.
    group_order = np.lexsort((width, movers_per_group))
    shape_of = movers_per_group[group_order] * (k + 1) + width[group_order]
    start = 0
    while start < len(group_order):
        same = int(np.searchsorted(shape_of, shape_of[start], side="right"))
        cells = int(movers_per_group[group_order[start]] * width[group_order[start]])
        stop = min(same, start + max(1, _SINKHORN_CELLS // cells))
        batch = group_order[start:stop]
        m, w = int(movers_per_group[batch].max()), int(width[batch].max())
        cols = np.argsort(~candidate[batch], axis=1, kind="stable")[:, :w]  # candidates first
        col_ok = np.take_along_axis(candidate[batch], cols, axis=1)
        position = np.full(len(groups), -1, dtype=np.int64)
        position[batch] = np.arange(len(batch))
        sel = np.flatnonzero(position[mover_group] >= 0)
        where = (position[mover_group[sel]], row_in_group[sel])
        cost = np.zeros((len(batch), m, w), dtype=np.float64)
        cost[where] = np.take_along_axis(dist[sel], cols[where[0]], axis=1)
        valid_rows = np.zeros((len(batch), m), dtype=bool)
        valid_rows[where] = True
        chosen = _sinkhorn_assign(cost, valid_rows, col_ok, float(epsilon), int(iters))
        out[movers[sel], -1] = cols[where[0], chosen[where]]
        start = stop
    return out


# -- statistics --------------------------------------------------------------------------------


def sid_stats(codes: np.ndarray, codebook_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Collision and code-utilisation statistics of SIDs (n, L).

    ``collision_rate`` is ``1 - distinct SIDs / items`` (MiniOneRec's definition);
    ``colliding_items`` counts items that share their SID. Per level: codes used, utilisation
    (used / codebook size; sizes default to ``max code + 1``) and perplexity (``exp`` of the
    entropy of the code distribution; K when codes are used evenly).

    Example:
        >>> s = sid_stats(np.array([[0, 1], [0, 1], [1, 0]]), codebook_sizes=[4, 2])
        >>> s["collision_rate"], s["colliding_items"], s["utilisation"]
        (0.3333, 2, [0.5, 1.0])
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not len(codes):
        raise ValueError(f"codes must be a non-empty (items, levels) array, got shape {codes.shape}")
    n, levels = codes.shape
    sizes = list(codebook_sizes) if codebook_sizes is not None else (codes.max(axis=0) + 1).tolist()
    _, counts = np.unique(codes, axis=0, return_counts=True)
    used, perplexity = [], []
    for lvl in range(levels):
        freq = np.bincount(codes[:, lvl])
        freq = freq[freq > 0] / n
        used.append(int(len(freq)))
        perplexity.append(round(float(np.exp(-(freq * np.log(freq)).sum())), 2))
    return {
        "items": int(n),
        "levels": int(levels),
        "codebook_sizes": [int(s) for s in sizes],
        "distinct_sids": int(len(counts)),
        "collision_rate": round(1.0 - len(counts) / n, 4),
        "colliding_items": int(counts[counts > 1].sum()),
        "max_items_per_sid": int(counts.max()),
        "codes_used": used,
        "utilisation": [round(u / s, 4) for u, s in zip(used, sizes)],
        "perplexity": perplexity,
    }


def random_sids(num_items: int, codebook_sizes: Sequence[int], seed: int = 0) -> np.ndarray:
    """Uniformly random codes of a given shape: the baseline a learned SID should beat.

    Example:
        >>> random_sids(5, [3, 4], seed=0).shape
        (5, 2)
    """
    rng = np.random.default_rng(seed)
    columns = [rng.integers(0, int(s), size=num_items) for s in codebook_sizes]
    return np.stack(columns, axis=1).astype(np.int32)


def titles_fingerprint(titles: Sequence[str]) -> str:
    """SHA-256 of a catalogue's titles (stored in a report so an index is not applied to another one).

    Example:
        >>> titles_fingerprint(["A", "B"])[:12]
        '86792b784594'
    """
    digest = hashlib.sha256()
    for title in titles:
        digest.update(title.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


# -- the whole quantiser -----------------------------------------------------------------------


@dataclass
class SIDIndex:
    """Semantic IDs (n, L') of a catalogue, the codebooks they came from, and the build report."""

    codes: np.ndarray
    codebooks: list[np.ndarray]
    report: dict[str, Any] = field(default_factory=dict)

    def write(self, path: PathLike) -> Path:
        """Write ``path`` (LC-Rec ``index.json``) and the report beside it; see :func:`write_sid_index`."""
        return write_sid_index(path, self.codes, report=self.report)


def build_sid_index(
    embeddings: np.ndarray,
    out: PathLike | None = None,
    *,
    levels: int = 3,
    codes: int | Sequence[int] = 256,
    balanced: bool = False,
    collisions: str = "extra_level",
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    sinkhorn_epsilon: float = 0.003,
    sinkhorn_iters: int = 100,
    titles: Sequence[str] | None = None,
    info: dict[str, Any] | None = None,
    progress: bool = True,
) -> SIDIndex:
    """Semantic IDs for N items from their embeddings (N, d): RQ-KMeans, then collision handling.

    Args:
        embeddings: one row per item, item id = row (e.g. from :func:`agents.model.encoders.embed_texts`).
        out: when given, the LC-Rec ``index.json`` to write (atomically), with the report beside it
            (:func:`sid_report_path`).
        levels, codes: L levels of K codes (an int, or one int per level). MiniOneRec: 3 x 256.
        balanced: capacity-bounded k-means at every level (MiniOneRec's constrained RQ-KMeans).
        collisions: ``"extra_level"`` (TIGER: an extra level numbers the items that share a code
            path; every SID then has L+1 codes), ``"sinkhorn"`` (LETTER / MiniOneRec: colliding
            items get distinct last-level codes by optimal transport; L codes) or ``"none"``.
        seed: the only source of randomness (deterministic on CPU for a given seed).
        max_iter, tol, n_init: k-means iterations (MiniOneRec: 100), tolerance (1e-4), restarts.
        sinkhorn_epsilon, sinkhorn_iters: de-collision Sinkhorn (MiniOneRec / LETTER: 0.003, 100).
        titles: the catalogue's titles, to store their fingerprint in the report (checked by
            :func:`with_sid_index`).
        info: extra JSON-serialisable entries for the report (e.g. the encoder).
        progress: tqdm progress bar for the quantisation.

    The report holds the statistics (:func:`sid_stats`) before and after collision handling,
    the reconstruction error and the time taken.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> index = build_sid_index(rng.normal(size=(500, 8)), levels=2, codes=8, progress=False)
        >>> index.codes.shape[0], len(np.unique(index.codes, axis=0)), index.report["collisions"]
        (500, 500, 'extra_level')
    """
    if collisions not in COLLISIONS:
        raise ValueError(f"collisions must be one of {COLLISIONS}, got {collisions!r}")
    top = MAX_SID_LEVELS - (collisions == "extra_level")
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool) and levels > top:
        raise ValueError(f"levels={levels}: at most {top} (SID tokens name levels a..z"
                         f"{'; extra_level adds one' if collisions == 'extra_level' else ''})")
    x = np.asarray(embeddings, dtype=np.float32)
    if titles is not None and len(titles) != len(x):
        raise ValueError(f"{len(titles)} titles for {len(x)} embeddings")
    t0 = time.perf_counter()
    rq = residual_kmeans(x, levels, codes, balanced=balanced, max_iter=max_iter, tol=tol, n_init=n_init,
                         seed=seed, progress=progress)
    t1 = time.perf_counter()
    sizes = [len(b) for b in rq.codebooks]
    before = sid_stats(rq.codes, sizes)
    if collisions == "extra_level":
        final = extra_level(rq.codes)
        final_sizes = [*sizes, int(final[:, -1].max()) + 1]
    elif collisions == "sinkhorn":
        final = sinkhorn_decollide(rq.codes, rq.residual_before(levels - 1), rq.codebooks[-1],
                                   epsilon=sinkhorn_epsilon, iters=sinkhorn_iters)
        final_sizes = sizes
    else:
        final = rq.codes.copy()
        final_sizes = sizes
    t2 = time.perf_counter()
    after = sid_stats(final, final_sizes)
    report: dict[str, Any] = {
        "method": "rq-kmeans-balanced" if balanced else "rq-kmeans",
        "items": int(len(x)), "embedding_dim": int(x.shape[1]), "levels": int(levels),
        "codes": sizes, "balanced": bool(balanced), "collisions": collisions, "seed": int(seed),
        "max_iter": int(max_iter), "tol": float(tol), "n_init": int(n_init),
        "sid_levels": int(final.shape[1]),
        "collision_rate_before": before["collision_rate"],
        "collision_rate_after": after["collision_rate"],
        "reconstruction_mse": float(np.mean(rq.residual.astype(np.float64) ** 2)),
        "relative_reconstruction_error": float(
            np.sum(rq.residual.astype(np.float64) ** 2) / max(np.sum(x.astype(np.float64) ** 2), 1e-30)),
        "before": before,
        "after": after,
        "time_s": {"quantise": round(t1 - t0, 3), "collisions": round(t2 - t1, 3),
                   "total": round(t2 - t0, 3)},
    }
    if collisions == "sinkhorn":
        report["sinkhorn"] = {"epsilon": float(sinkhorn_epsilon), "iters": int(sinkhorn_iters),
                              "items_moved": int((final[:, -1] != rq.codes[:, -1]).sum())}
    if titles is not None:
        report["titles_sha256"] = titles_fingerprint(titles)
    if info:
        report.update(info)
    index = SIDIndex(final.astype(np.int32), rq.codebooks, report)
    if out is not None:
        index.write(out)
    return index


# -- index files -------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sid_report_path(path: PathLike) -> Path:
    """Where the report of an index file lives: ``X.index.json`` -> ``X.index.report.json``.

    Example:
        >>> sid_report_path("data/Office.index.json").name
        'Office.index.report.json'
    """
    path = Path(path)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + ".report.json")


def write_sid_index(path: PathLike, codes: np.ndarray, *, report: dict[str, Any] | None = None) -> Path:
    """Write SIDs as an LC-Rec ``index.json`` (``{"0": ["<a_12>", "<b_3>", ...], ...}``), atomically;
    with ``report``, also :func:`sid_report_path` (JSON). Returns ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_sid_index(pathlib.Path(tempfile.mkdtemp()) / "X.index.json", np.array([[1, 2]]))
        >>> p.read_text()
        '{"0": ["<a_1>", "<b_2>"]}'
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not len(codes) or not np.issubdtype(codes.dtype, np.integer) or (codes < 0).any():
        raise ValueError(f"codes must be a non-empty (items, levels) array of non-negative ints, got "
                         f"shape {codes.shape} dtype {codes.dtype}")
    if codes.shape[1] > MAX_SID_LEVELS:
        raise ValueError(f"{codes.shape[1]} levels: SID tokens name levels a..z, so at most {MAX_SID_LEVELS}")
    letters = [chr(ord("a") + lvl) for lvl in range(codes.shape[1])]
    index = {str(i): [f"<{letters[lvl]}_{c}>" for lvl, c in enumerate(row)]
             for i, row in enumerate(codes.tolist())}
    path = Path(path)
    _atomic_write_text(path, json.dumps(index))
    if report is not None:
        _atomic_write_text(sid_report_path(path), json.dumps(report, indent=2) + "\n")
    return path


def read_sid_index(path: PathLike, num_items: int | None = None) -> np.ndarray:
    """Read an LC-Rec ``index.json`` into codes (N, L); item ids must be 0..N-1, each once.

    With ``num_items``, the ids must be exactly ``0..num_items-1``; errors name the file, the
    missing or extra ids and the remedy.

    Example:
        >>> import tempfile, pathlib
        >>> p = write_sid_index(pathlib.Path(tempfile.mkdtemp()) / "i.json", np.array([[1, 2], [0, 3]]))
        >>> read_sid_index(p, num_items=2).tolist()
        [[1, 2], [0, 3]]
    """
    path = Path(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: SID index file not found (build one with "
                                "agents.model.encoders.build_sids_for_dataset or `recgym data sids`)"
                                ) from None
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
                              line=err.lineno) from err
    if not isinstance(index, dict) or not index:
        raise DataFormatError(path, 'expected a non-empty JSON object {"item_id": ["<a_1>", "<b_2>", ...]}')
    ids = np.empty(len(index), dtype=np.int64)
    for pos, key in enumerate(index):
        try:
            ids[pos] = int(key)
        except ValueError:
            raise DataFormatError(path, "item ids must be integers", key=key) from None
    n = len(index) if num_items is None else int(num_items)
    present = np.zeros(n, dtype=bool)
    inside = (ids >= 0) & (ids < n)
    present[ids[inside]] = True
    if not inside.all() or not present.all() or len(np.unique(ids)) != len(ids):
        extra = sorted(ids[~inside].tolist())
        missing = np.flatnonzero(~present).tolist()
        raise ValueError(
            f"{path}: the index's item ids do not match a catalogue of {n} items (ids 0..{n - 1}): "
            f"{len(missing)} missing (e.g. {missing[:5]}), {len(extra)} outside the range "
            f"(e.g. {extra[:5]}); "
            "the index was built for another catalogue: rebuild it for this dataset")
    texts = ["".join(v) if isinstance(v, list) and all(isinstance(t, str) for t in v) else None
             for v in index.values()]
    levels = None
    if all(t is not None for t in texts):
        try:
            levels = len(parse_sid(texts[0]))  # type: ignore[arg-type]
        except ValueError:
            levels = None
    if levels is not None:
        line = "".join(f"<{chr(ord('a') + lvl)}_(\\d+)>" for lvl in range(levels))
        found = re.findall(f"^{line}$", "\n".join(texts), flags=re.MULTILINE)  # type: ignore[arg-type]
        if len(found) == len(texts) and "\n" not in "".join(texts):  # type: ignore[arg-type]
            codes = np.empty((n, levels), dtype=np.int32)
            codes[ids] = np.array(found, dtype=np.int64).reshape(len(texts), levels)
            return codes
    rows: list[tuple[int, ...]] = []  # slow path: item by item, naming the first bad entry
    for key, value in index.items():
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise DataFormatError(path, 'expected a list of SID tokens like ["<a_1>", "<b_2>"]', key=key)
        try:
            rows.append(parse_sid(value))
        except ValueError as err:
            raise DataFormatError(path, str(err), key=key) from None
        if len(rows[-1]) != len(rows[0]):
            raise DataFormatError(path, f"{len(rows[-1])} SID levels, the first item has {len(rows[0])}",
                                  key=key)
    codes = np.empty((n, len(rows[0])), dtype=np.int32)
    codes[ids] = np.array(rows, dtype=np.int64)
    return codes


def with_sid_index(
    dataset: Dataset, index: PathLike | np.ndarray | SIDIndex | str, *, check_titles: bool = True
) -> Dataset:
    """The dataset with its catalogue's semantic IDs replaced by an index's (a path to an LC-Rec
    ``index.json``, an :class:`SIDIndex` or a (N, L) code array). Titles, keys and splits are kept,
    so ``RecGenTask(with_sid_index(ds, path), representation="sid")`` plays the new SIDs.

    ``index="atomic"`` gives every item its own single code (``<a_i>`` for item i): one action per
    item, the item-ID vocabulary of SASRec-style models, so a policy does not compose items from
    shared codes (a file named ``atomic`` is ``"./atomic"``).

    When the index file has a report with the fingerprint of the titles it was built from and the
    dataset's titles differ, a ValueError says so (``check_titles=False`` skips that check).

    Example:
        >>> from recgym.data import make_synthetic
        >>> ds = make_synthetic(num_items=50, num_users=20, num_categories=2, clusters_per_category=2)
        >>> new = with_sid_index(ds, np.arange(100).reshape(50, 2))
        >>> new.catalogue.sid_string(3), new.catalogue.titles == ds.catalogue.titles
        ('<a_6><b_7>', True)
        >>> with_sid_index(ds, "atomic").catalogue.sid_string(3)  # one token per item
        '<a_3>'
    """
    cat = dataset.catalogue
    source: str
    if isinstance(index, SIDIndex):
        codes, source = index.codes, "an SIDIndex"
        fingerprint = index.report.get("titles_sha256")
    elif isinstance(index, np.ndarray):
        codes, source, fingerprint = index, "an array", None
    elif isinstance(index, str) and index == ATOMIC:  # item i is the one code <a_i>
        codes, source, fingerprint = np.arange(cat.num_items, dtype=np.int64)[:, None], ATOMIC, None
    else:
        codes = read_sid_index(index, num_items=cat.num_items)
        source = str(index)
        report_path = sid_report_path(index)
        fingerprint = None
        if report_path.is_file():
            try:
                fingerprint = json.loads(report_path.read_text(encoding="utf-8")).get("titles_sha256")
            except (json.JSONDecodeError, AttributeError):
                fingerprint = None
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) != cat.num_items:
        raise ValueError(f"{source}: SIDs of shape {codes.shape} for {dataset.name!r} with {cat.num_items} "
                         "items: the index was built for another catalogue: rebuild it for this dataset")
    same_titles = cat.titles is None or not fingerprint or fingerprint == titles_fingerprint(cat.titles)
    if check_titles and not same_titles:
        raise ValueError(f"{source} was built from other titles than those of {dataset.name!r} (the "
                         "titles_sha256 in its report differs): rebuild the index for this dataset, or pass "
                         "check_titles=False if the ids do correspond")
    catalogue = Catalogue(cat.num_items, titles=cat.titles, sids=codes, keys=cat.keys)
    return dataclasses.replace(dataset, catalogue=catalogue, info={**dataset.info, "sid_index": source})
