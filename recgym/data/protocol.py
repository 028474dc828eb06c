"""The D3 data protocol shared by the raw pipelines (Amazon Reviews 2018, UCSD Book Graph).

A source module only parses its files into an :class:`InteractionLog` (user, item, time per
interaction, in file order) plus a ``{item key: raw title}`` map; :func:`build_dataset` does the
rest, exactly as the BIGRec -> D3 -> ReRe -> RISER lineage does:

1. titles: HTML entities unescaped, whitespace collapsed; items whose title is missing, empty,
   looks like HTML / JavaScript, or has more than ``max_words`` words are dropped, and so are all
   interactions with them;
2. time window: from ``start`` (default: 12 months before ``end``) to the last day of the ``end``
   month (UTC), widened a year at a time until the window's ``k``-core holds ``min_items`` items
   or the window covers the first interaction;
3. iterative ``k``-core inside the window (users and items with at least ``k`` interactions);
4. every interaction of a user after the first (time order, ties in file order) is an example whose
   history is the up to ``max_history`` previous items;
5. all examples sorted by target time (stable) and split 8:1:1 (train / valid / test).
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import html
import json
import os
import re
import time
import zlib
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recgym.data.cache import cached_dataset
from recgym.data.checks import check_max_history
from recgym.data.dataset import (
    Catalogue,
    DataFormatError,
    Dataset,
    Examples,
    sequence_windows,
    temporal_split,
)
from recgym.data.download import data_dir, fetch_raw

__all__ = ["PROTOCOL_VERSION", "InteractionLog", "build_dataset", "cache_path", "cached_dataset",
           "check_params", "clean_title", "fetch_raw", "k_core", "month_start", "parse_month",
           "read_json_lines", "required"]

PROTOCOL_VERSION = 1

_WHITESPACE = re.compile(r"\s+")
# Markup or script that upstream metadata sometimes has in place of a title, e.g.
# '<span id="...">' or 'var aPageStart = (new Date()).getTime();'.
_MARKUP = re.compile(
    r"<\s*(?:/?[A-Za-z]|!)"  # an HTML tag, comment or doctype
    r"|getTime\s*\(|\bvar\s+[\w$]+\s*=|\bfunction\s*\("  # JavaScript
    r"|\{[^}]*[;=]|\}\s*[;)]"  # a JavaScript block or object literal
)


def clean_title(raw: object, max_words: int = 20) -> str | None:
    """A display title, or None when the item has no usable title.

    HTML entities are unescaped (repeatedly, for double-escaped text such as ``&amp;amp;``) and
    whitespace is collapsed. None for a missing / non-string / empty title, one that looks like
    HTML or JavaScript, or one with more than ``max_words`` words.

    Example:
        >>> clean_title("  Mario &amp; Luigi:&nbsp; Superstar   Saga ")
        'Mario & Luigi: Superstar Saga'
        >>> clean_title('<span id="x">Deal</span>') is None, clean_title("word " * 21) is None
        (True, True)
    """
    if not isinstance(raw, str):
        return None
    title = raw
    for _ in range(3):
        unescaped = html.unescape(title)
        if unescaped == title:
            break
        title = unescaped
    title = _WHITESPACE.sub(" ", title).strip()
    if not title or _MARKUP.search(title) or len(title.split(" ")) > max_words:
        return None
    return title


def k_core(user: np.ndarray, item: np.ndarray, k: int = 5) -> np.ndarray:
    """Mask of the interactions in the iterative ``k``-core (every user and item has ``>= k``).

    Counts are per interaction (a repeated user-item pair counts twice), recomputed after each
    removal pass until nothing changes. Each pass is two ``np.bincount`` calls.

    Example:
        >>> k_core(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0]), k=2).tolist()
        [True, True, True, True, False]
    """
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    keep = np.ones(len(user), dtype=bool)
    if not len(user):
        return keep
    num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
    kept = len(user)
    while True:
        user_count = np.bincount(user[keep], minlength=num_users)
        item_count = np.bincount(item[keep], minlength=num_items)
        keep &= (user_count[user] >= k) & (item_count[item] >= k)
        now = int(keep.sum())
        if now == kept:
            return keep
        kept = now


def month_start(month: tuple[int, int]) -> int:
    """Unix time of 00:00 UTC on the first day of ``(year, month)``; months may overflow.

    Example:
        >>> month_start((2018, 13)) == month_start((2019, 1))
        True
    """
    year, mon = month
    year += (mon - 1) // 12
    mon = (mon - 1) % 12 + 1
    return calendar.timegm((year, mon, 1, 0, 0, 0))


def parse_month(text: str) -> tuple[int, int]:
    """``"2018-11"`` -> ``(2018, 11)``.

    Example:
        >>> parse_month("2018-11")
        (2018, 11)
    """
    match = re.fullmatch(r"(\d{4})-(\d{1,2})", str(text).strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"expected a month as 'YYYY-MM', got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _shift(month: tuple[int, int], months: int) -> tuple[int, int]:
    index = month[0] * 12 + month[1] - 1 + months
    return index // 12, index % 12 + 1


def _format(month: tuple[int, int]) -> str:
    return f"{month[0]:04d}-{month[1]:02d}"


class InteractionLog:
    """Interactions as a source file lists them: external ids interned to ints, times in seconds.

    Example:
        >>> log = InteractionLog()
        >>> log.add("u1", "A", 10); log.add("u2", "A", 5)
        >>> [a.tolist() for a in log.arrays()], log.item_keys
        ([[0, 1], [0, 0], [10, 5]], ['A'])
    """

    def __init__(self) -> None:
        self.user_ids: dict[str, int] = {}
        self.item_ids: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self._user = array("q")
        self._item = array("q")
        self._time = array("q")

    def add(self, user: str, item: str, timestamp: int) -> None:
        """Record that ``user`` interacted with ``item`` at ``timestamp`` (unix seconds)."""
        self._user.append(self.user_ids.setdefault(user, len(self.user_ids)))
        self._item.append(self.item_ids.setdefault(item, len(self.item_ids)))
        self._time.append(timestamp)

    def skip(self, reason: str) -> None:
        """Count an input row left out on purpose (recorded in the dataset's ``info``)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def __len__(self) -> int:
        return len(self._user)

    @property
    def user_keys(self) -> list[str]:
        return list(self.user_ids)

    @property
    def item_keys(self) -> list[str]:
        return list(self.item_ids)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(user, item, timestamp)`` int64 arrays, one entry per interaction, in file order."""
        return tuple(np.frombuffer(a, dtype=np.int64).copy() if len(a) else np.zeros(0, np.int64)
                     for a in (self._user, self._item, self._time))  # type: ignore[return-value]


def read_json_lines(
    path: str | os.PathLike[str], *, progress: bool = True
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line number, object)`` from a JSON-lines file, gzipped or not (by magic bytes).

    Blank lines are skipped. Raises :class:`DataFormatError` naming the file and line for a line
    that is not a JSON object, and for corrupt or truncated gzip data.

    Example:
        >>> import tempfile, os
        >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        ...     _ = fh.write('{"a": 1}\\n\\n{"a": 2}\\n')
        >>> list(read_json_lines(fh.name, progress=False))
        [(1, {'a': 1}), (3, {'a': 2})]
        >>> os.unlink(fh.name)
    """
    from tqdm.auto import tqdm

    path = Path(path)
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    number = 0
    bar = tqdm(desc=path.name, unit=" lines", unit_scale=True, disable=not progress, leave=False)
    try:
        with bar, (gzip.open(path, "rb") if gzipped else open(path, "rb")) as fh:
            for number, raw in enumerate(fh, 1):
                if number % 65536 == 0:
                    bar.update(65536)
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except RecursionError:
                    raise DataFormatError(path, "JSON nested too deeply to parse", line=number) from None
                except ValueError as err:
                    hint = ""
                    if raw.lstrip().startswith(b"{'"):
                        hint = " (it looks like a Python dict literal; the 2018 files are JSON)"
                    raise DataFormatError(path, f"not valid JSON: {err}{hint}", line=number) from None
                if not isinstance(obj, dict):
                    raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}",
                                          line=number)
                yield number, obj
            bar.update(number % 65536)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataFormatError(path, f"corrupt or truncated gzip data ({err})", line=number + 1) from err


def required(
    obj: Mapping[str, Any], key: str, path: str | os.PathLike[str], line: int,
    kind: type | tuple[type, ...] = str,
) -> Any:
    """``obj[key]``, or :class:`DataFormatError` naming the file, line and key when it is missing
    or not of type ``kind``.

    Example:
        >>> required({"asin": "B01"}, "asin", "meta.json.gz", 3)
        'B01'
    """
    try:
        value = obj[key]
    except KeyError:
        raise DataFormatError(path, "missing required key", line=line, key=key) from None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(t.__name__ for t in kinds)
        raise DataFormatError(path, f"expected {names}, got {value!r}", line=line, key=key)
    return value


def cache_path(stem: str, max_history: int, params: Mapping[str, Any]) -> Path:
    """``data_dir()/processed/<stem>-h<max_history>-<12 hex of a hash of the params>.npz``.

    Example:
        >>> cache_path("amazon-Video_Games", 10, {"k": 5}).name  # doctest: +ELLIPSIS
        'amazon-Video_Games-h10-....npz'
    """
    blob = json.dumps({**params, "max_history": max_history, "protocol": PROTOCOL_VERSION},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return data_dir() / "processed" / f"{stem}-h{max_history}-{digest}.npz"


def check_params(max_history: int, k: int, start: str | None, end: str | None) -> None:
    """Fail fast (before any download) on parameters :func:`build_dataset` would reject.

    Example:
        >>> check_params(10, 5, "2017-11", "2018-11")
    """
    check_max_history(max_history)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the k-core threshold) must be a positive int, got {k!r}")
    for month in (start, end):
        if month is not None:
            parse_month(month)
    if start is not None and end is not None and parse_month(start) > parse_month(end):
        raise ValueError(f"window start {start} is after its end {end}")


def build_dataset(
    name: str,
    log: InteractionLog,
    titles: Mapping[str, object],
    *,
    max_history: int = 10,
    min_items: int = 10_000,
    k: int = 5,
    max_words: int = 20,
    start: str | None = None,
    end: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> Dataset:
    """Apply the D3 protocol (see the module docstring) to parsed interactions and raw titles.

    Args:
        name: the dataset name.
        log: interactions in file order.
        titles: raw title per item key (items without one are dropped).
        max_history: the history window of each example.
        min_items: widen the time window until its k-core holds at least this many items.
        k: the k of the iterative k-core.
        max_words: longer titles are dropped.
        start: first month of the window (``"YYYY-MM"``); default 12 months before ``end``.
        end: last month of the window, included whole (UTC); default the month of the last
            interaction.
        info: extra provenance merged into ``Dataset.info``.

    Items are numbered by sorted key (ASIN / book id), users by first appearance in the file.

    Example:
        >>> log = InteractionLog()
        >>> for t, (u, i) in enumerate([(u, i) for u in "abc" for i in "xyz"]):
        ...     log.add(u, i, 1_500_000_000 + t)
        >>> ds = build_dataset("demo", log, {"x": "X", "y": "Y", "z": "Z"}, k=3, min_items=1)
        >>> ds.catalogue.titles, len(ds.train) + len(ds.valid) + len(ds.test)
        (['X', 'Y', 'Z'], 6)
    """
    check_params(max_history, k, start, end)
    user, item, ts = log.arrays()
    item_keys, user_keys = log.item_keys, log.user_keys
    clean = [clean_title(titles.get(key), max_words) for key in item_keys]
    has_title = np.fromiter((t is not None for t in clean), dtype=bool, count=len(clean))
    titled = has_title[item]
    if not titled.any():
        raise ValueError(f"{name}: no interaction is with an item that has a usable title")

    last = (parse_month(end) if end is not None
            else tuple(time.gmtime(int(ts[titled].max()))[:2]))
    end_ts = month_start(_shift(last, 1))  # exclusive
    candidates = titled & (ts < end_ts)
    if not candidates.any():
        raise ValueError(f"{name}: no interaction with a usable title before the end of {_format(last)}")
    data_start = int(ts[candidates].min())
    first = parse_month(start) if start is not None else _shift(last, -12)
    if month_start(first) >= end_ts:
        raise ValueError(f"{name}: window start {_format(first)} is after its end {_format(last)}")

    widened = 0
    while True:
        start_ts = month_start(first)
        window = candidates & (ts >= start_ts)
        core = k_core(user[window], item[window], k)
        num_items = int(np.unique(item[window][core]).size)
        if num_items >= min_items or start_ts <= data_start:
            break
        # Go back a year at a time; years without any interaction cannot change the result.
        earlier = int(ts[candidates & (ts < start_ts)].max())
        while True:
            first, widened = _shift(first, -12), widened + 1
            if month_start(first) <= earlier:
                break

    rows = np.flatnonzero(window)[core]
    if not len(rows):
        raise ValueError(f"{name}: the {k}-core of the window {_format(first)}..{_format(last)} is empty")
    examples, users, items = _examples(user[rows], item[rows], ts[rows], item_keys, max_history)
    train, valid, test = (examples.subset(s) for s in temporal_split(len(examples)))
    catalogue = Catalogue(len(items), titles=[clean[i] for i in items],  # type: ignore[misc]
                          keys=[item_keys[i] for i in items])
    meta: dict[str, Any] = dict(info or {})
    meta.update({
        "protocol": (
            f"D3: titles html-unescaped and whitespace-collapsed; items with no title, an HTML/JS-like "
            f"title or more than {max_words} words dropped with their interactions; time window "
            f"[{_format(first)}, {_format(last)}] (UTC months, end month included) widened a year at a "
            f"time until its {k}-core has >= {min_items} items or the data start; iterative {k}-core; "
            f"every interaction after a user's first (time order, ties in file order) is an example "
            f"with <= {max_history} previous items; examples sorted by target time (stable), split "
            f"8:1:1 train/valid/test."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "window": {"start": _format(first), "end": _format(last), "start_ts": month_start(first),
                   "end_ts_exclusive": end_ts, "widened_years": widened,
                   "reached_data_start": month_start(first) <= data_start},
        "params": {"max_history": max_history, "min_items": min_items, "k": k, "max_words": max_words},
        "counts": {
            "raw_interactions": len(log), "raw_items": len(item_keys), "raw_users": len(user_keys),
            "items_with_title": int(has_title.sum()),
            "interactions_with_title": int(titled.sum()),
            "interactions_in_window": int(window.sum()),
            "interactions": len(rows), "users": len(users), "items": len(items),
            "examples": {"train": len(train), "valid": len(valid), "test": len(test)},
            "skipped": dict(log.skipped),
        },
    })
    return Dataset(name, catalogue, train, valid, test,
                   users=[user_keys[u] for u in users], info=meta)


def _examples(
    user: np.ndarray, item: np.ndarray, ts: np.ndarray, item_keys: list[str], max_history: int
) -> tuple[Examples, np.ndarray, np.ndarray]:
    """Examples from kept interactions (file order); returns them with the old user / item ids
    of the new users (by first appearance) and new items (by sorted key)."""
    old_items = np.unique(item)
    old_items = old_items[np.argsort(np.array([item_keys[i] for i in old_items], dtype=object),
                                     kind="stable")]
    item_map = np.full(len(item_keys), -1, dtype=np.int64)
    item_map[old_items] = np.arange(len(old_items))
    seen, first_row = np.unique(user, return_index=True)
    old_users = seen[np.argsort(first_row)]
    user_map = np.full(int(user.max(initial=-1)) + 1, -1, dtype=np.int64)
    user_map[old_users] = np.arange(len(old_users))

    new_user, new_item = user_map[user], item_map[item]
    order = np.lexsort((np.arange(len(user)), ts, new_user))  # per user by time, ties in file order
    seq_user, seq_item, seq_ts = new_user[order], new_item[order], ts[order]
    n = len(order)
    block = np.flatnonzero(np.r_[True, seq_user[1:] != seq_user[:-1]]) if n else np.zeros(0, np.int64)
    starts = block[seq_user]  # users are 0..U-1 and sorted, so block[u] is where u's sequence starts
    targets = np.flatnonzero(np.arange(n) != starts)
    history, history_len = sequence_windows(seq_item, starts[targets], targets, max_history)
    by_time = np.argsort(seq_ts[targets], kind="stable")  # D3 order: user blocks, then time
    examples = Examples(
        user=seq_user[targets][by_time],
        history=history[by_time].reshape(len(targets), max_history),
        history_len=history_len[by_time],
        target=seq_item[targets][by_time],
        timestamp=seq_ts[targets][by_time],
    )
    return examples, old_users, old_items
