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


def ranking_metrics(hits: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@K and NDCG@K averaged over requests, from a boolean hit matrix ordered by rank.

    HR@K is 1 when the target is among the first K; NDCG@K is ``1 / log2(rank + 1)`` for the first
    hit at 1-based ``rank <= K`` (one relevant item, so the ideal DCG is 1). Lists shorter than K
    count what they have. Requests with no list count as misses. ``hits`` must be booleans (or
    0 / 1 integers) and every K an int >= 1.

    Example:
        >>> m = ranking_metrics(np.array([[False, True], [True, False]]), ks=(1, 2))
        >>> m["HR@1"], m["HR@2"], round(m["NDCG@2"], 4)
        (0.5, 1.0, 0.8155)
    """
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
    if isinstance(ks, (str, bytes)) or not isinstance(ks, (Sequence, np.ndarray)):
        raise TypeError(f"ks must be a sequence of ints (cutoffs K), got {ks!r}")
    ks = [check_int(k, f"ks[{i}]", minimum=1) for i, k in enumerate(ks)]
    n, width = hits.shape
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1), width)  # 0-based rank of the first hit
    out: dict[str, float] = {}
    for k in ks:
        inside = first < k
        out[f"HR@{k}"] = float(inside.mean()) if n else 0.0
        gain = np.where(inside, 1.0 / np.log2(first + 2.0), 0.0)
        out[f"NDCG@{k}"] = float(gain.mean()) if n else 0.0
    return out


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
