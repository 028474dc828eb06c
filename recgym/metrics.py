"""Ranking metrics of the LLM-recommendation literature: HR@K and NDCG@K with one relevant item.

Every agent, LLM or classic, is scored the same way: it returns a ranked list of items per
request; the list is compared with the request's target. A generated title or semantic ID can
denote several items: callers pass the *hit* matrix (``hits[i, r]`` is True when the item group at
rank r contains the target), and :func:`hits_from_ranked` builds it for plain item-id lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recgym._checks import check_int

KS = (1, 3, 5, 10, 20, 50)  # as MiniOneRec and the RISER paper report (beam width 50)


def hits_from_ranked(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Boolean (n, K) matrix: whether rank r of request i is its target (ranked ids, -1 = empty).

    Example:
        >>> hits_from_ranked(np.array([[3, 1, 2], [0, 5, -1]]), np.array([1, 7])).tolist()
        [[False, True, False], [False, False, False]]
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a 2-D (requests, ranks) array, got shape {ranked.shape}")
    targets = _targets(targets, len(ranked))
    return ranked == targets[:, None]


def _targets(targets: np.ndarray, n: int) -> np.ndarray:
    """One target per request, never broadcast (a single target would silently score every row)."""
    targets = np.asarray(targets)
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), one per request, got {targets.shape}")
    return targets


def hits_from_item_sets(
    offsets: np.ndarray, values: np.ndarray, targets: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Hit matrix when each ranked entry denotes a *set* of items (a title or SID shared by several).

    Entry ``e = i * K + r`` (request i, rank r) denotes ``values[offsets[e]:offsets[e + 1]]``; it is a
    hit when request i's target is among them (empty sets never hit), as in the D3 / BIGRec papers.
    :meth:`recgym.tree.PrefixTree.items_batch` gives ``offsets, values`` for terminal nodes.

    Example:
        >>> offsets, values = np.array([0, 2, 3, 3, 4]), np.array([4, 7, 1, 7])
        >>> hits_from_item_sets(offsets, values, np.array([7, 7]), (2, 2)).tolist()
        [[True, False], [False, True]]
    """
    n, k = (check_int(v, f"shape[{i}]", minimum=0) for i, v in enumerate(shape))
    offsets, values = np.asarray(offsets), np.asarray(values)
    if offsets.shape != (n * k + 1,):
        raise ValueError(f"offsets must have {n} * {k} + 1 = {n * k + 1} entries, got {len(offsets)}")
    counts = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != len(values) or (counts < 0).any():
        raise ValueError(f"offsets must rise from 0 to len(values) = {len(values)}, got "
                         f"{offsets[0]} .. {offsets[-1]}")
    per_entry_target = np.repeat(np.repeat(_targets(targets, n), k), counts)
    match = (values == per_entry_target).astype(np.int64)
    entry = np.repeat(np.arange(n * k), counts)
    return (np.bincount(entry, weights=match, minlength=n * k) > 0).reshape(n, k)


def first_hit_ranks(hits: np.ndarray) -> np.ndarray:
    """The 0-based rank of each request's first hit, -1 where its list holds none.

    ``hits`` is a boolean (or 0 / 1 integer) ``(requests, ranks)`` matrix, as for
    :func:`ranking_metrics` (which scores these ranks).

    Example:
        >>> hits = np.array([[False, True, True], [False, False, False], [True, False, False]])
        >>> first_hit_ranks(hits).tolist()
        [1, -1, 0]
    """
    hits = _hit_matrix(hits)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1).astype(np.int64)


def _hit_matrix(hits: np.ndarray) -> np.ndarray:
    """``hits`` as a 2-D boolean array, or an error (a score matrix passed by mistake is refused)."""
    hits = np.asarray(hits)
    if hits.ndim != 2:
        raise ValueError(f"hits must be a 2-D (requests, ranks) array, got shape {hits.shape}")
    if hits.dtype != bool:
        # A score matrix passed by mistake would count every nonzero score as a hit.
        if hits.dtype.kind not in "iu":
            raise TypeError(f"hits must be booleans (or 0 / 1 integers), got dtype {hits.dtype}")
        if hits.size and not ((hits == 0) | (hits == 1)).all():
            bad = hits[(hits != 0) & (hits != 1)][0]
            raise ValueError(f"hits must be booleans (or 0 / 1 integers), got the value {bad}")
        hits = hits.astype(bool)
    return hits


def request_gains(ranks: np.ndarray | Sequence[int], metric: str) -> np.ndarray:
    """Per-request HR@K (1 or 0) or NDCG@K (``1 / log2(rank + 2)``) from 0-based first-hit ranks.

    ``ranks`` are :func:`first_hit_ranks` (-1: no hit in the list); ``metric`` is ``"HR@K"`` or
    ``"NDCG@K"``. The mean over requests is :func:`ranking_metrics`' value. A list of length L
    says nothing about ranks >= L, so only K <= L is meaningful; that is the caller's to check.

    Example:
        >>> request_gains([0, 1, -1, 12], "NDCG@10").round(4).tolist()
        [1.0, 0.6309, 0.0, 0.0]
        >>> request_gains([0, 1, -1, 12], "HR@20").tolist()
        [1.0, 1.0, 0.0, 1.0]
    """
    name, _, cutoff = str(metric).partition("@")
    if name not in ("HR", "NDCG") or not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(f"metric must be 'HR@K' or 'NDCG@K' with an integer K >= 1, got {metric!r}")
    k = int(cutoff)
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be a 1-D array (one first-hit rank per request), got shape "
                         f"{ranks.shape}")
    if ranks.size and (ranks.dtype.kind not in "iu" or ranks.min() < -1):
        raise ValueError(f"ranks must be integers >= -1 (-1: no hit), got dtype {ranks.dtype} "
                         f"and minimum {ranks.min()}")
    inside = (ranks >= 0) & (ranks < k)
    if name == "HR":
        return inside.astype(np.float64)
    return np.where(inside, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def ranking_metrics(hits: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@K and NDCG@K averaged over requests, from a boolean hit matrix ordered by rank.

    HR@K is 1 when the target is among the first K; NDCG@K is ``1 / log2(rank + 1)`` for the first
    hit at 1-based ``rank <= K`` (one relevant item, so the ideal DCG is 1). Lists shorter than K
    count what they have. Requests with no list count as misses. ``hits`` must be booleans (or
    0 / 1 integers) and every K an int >= 1. Each value is the mean of :func:`request_gains` of
    the :func:`first_hit_ranks`.

    Example:
        >>> m = ranking_metrics(np.array([[False, True], [True, False]]), ks=(1, 2))
        >>> m["HR@1"], m["HR@2"], round(m["NDCG@2"], 4)
        (0.5, 1.0, 0.8155)
    """
    ranks = first_hit_ranks(hits)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, (Sequence, np.ndarray)):
        raise TypeError(f"ks must be a sequence of ints (cutoffs K), got {ks!r}")
    ks = [check_int(k, f"ks[{i}]", minimum=1) for i, k in enumerate(ks)]
    out: dict[str, float] = {}
    for k in ks:
        for name in ("HR", "NDCG"):
            gains = request_gains(ranks, f"{name}@{k}")
            out[f"{name}@{k}"] = float(gains.mean()) if len(gains) else 0.0
    return out


def paired_bootstrap(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Paired bootstrap of ``mean(a - b)`` over requests: the difference and its percentile interval.

    ``a[i]`` and ``b[i]`` are two agents' gains on the same request i (e.g. :func:`request_gains`).
    Each of ``resamples`` resamples draws n request indices with replacement and takes the mean
    of ``a - b`` over them (the *same* indices for both: the requests pair). Returns
    ``difference`` (``mean(a - b)`` on the requests themselves), ``low`` / ``high`` (the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means),
    ``fraction_le_zero`` (the share of resampled means <= 0), ``requests``, ``resamples`` and
    ``confidence``. Vectorized: the index matrix is drawn in chunks of at most about 4M entries.
    The same ``seed`` and n give the same resamples, so two comparisons on one request sample
    share them.

    Example:
        >>> r = paired_bootstrap([0.5, 1.0, 0.0], [0.25, 0.75, -0.25])  # a constant shift
        >>> r["difference"], r["low"], r["high"], r["fraction_le_zero"]
        (0.25, 0.25, 0.25, 0.0)
    """
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must be 1-D arrays of the same length (one value per request, paired), "
                         f"got a of shape {a_arr.shape} and b of shape {b_arr.shape}")
    n = len(a_arr)
    if n == 0:
        raise ValueError("a and b are empty: no requests to resample")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ValueError("a and b must be finite (a NaN or inf gain would make every resample NaN)")
    resamples = check_int(resamples, "resamples", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)) \
            or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    diff = a_arr - b_arr
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 22) // n)  # bounds the index matrix to about 4M entries (32 MB)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        index = rng.integers(0, n, size=(rows, n))
        means[start:start + rows] = diff[index].mean(axis=1)
    tail = (1.0 - float(confidence)) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
            "fraction_le_zero": float((means <= 0.0).mean()), "requests": n, "resamples": resamples,
            "confidence": float(confidence)}


def format_table(rows: dict[str, dict[str, float]], ks: Sequence[int] = KS) -> str:
    """A Markdown table with one row per agent and HR/NDCG@K columns.

    Example:
        >>> print(format_table({"pop": {"HR@1": 0.1, "NDCG@1": 0.1}}, ks=(1,)))
        | agent | HR@1 | NDCG@1 |
        |---|---|---|
        | pop | 0.1000 | 0.1000 |
    """
    cols = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    lines = ["| agent | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "-" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
