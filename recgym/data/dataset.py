"""The one data model every reader, pipeline and environment shares.

A :class:`Dataset` is an item :class:`Catalogue` plus three :class:`Examples` splits. Examples are
columns of numpy arrays (one row per recommendation request), never one Python object per row:
the Games data has ~450k interactions.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "valid", "test")
PAD = -1  # padding value of history arrays and of unknown timestamps / users
CACHE_VERSION = 1


class DataFormatError(ValueError):
    """Bad input data. The message always names the file, and the line or key where known.

    Example:
        >>> raise DataFormatError("data/x.csv", "expected 11 columns, got 3", line=7)
        Traceback (most recent call last):
        recgym.data.dataset.DataFormatError: data/x.csv, line 7: expected 11 columns, got 3
    """

    def __init__(
        self, path: str | os.PathLike[str], message: str, *, line: int | None = None, key: Any = None
    ) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.key = key


class DataWarning(UserWarning):
    """Input data was usable but something was left out or could not be verified (the message says
    what and how much).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warnings.warn("3 records left out", DataWarning)
        >>> caught[0].category.__name__
        'DataWarning'
    """


_SID_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def parse_sid(tokens: str | Sequence[str]) -> tuple[int, ...]:
    """Parse semantic-ID tokens such as ``["<a_12>", "<b_7>"]`` or ``"<a_12><b_7>"`` into codes.

    Level letters must run a, b, c, ... in order.

    Example:
        >>> parse_sid("<a_12><b_7><c_3>")
        (12, 7, 3)
    """
    text = tokens if isinstance(tokens, str) else "".join(tokens)
    found = _SID_TOKEN.findall(text)
    if not found or _SID_TOKEN.sub("", text).strip():
        raise ValueError(f"not a semantic ID: {text!r}")
    for level, (letter, _) in enumerate(found):
        if ord(letter) - ord("a") != level:
            raise ValueError(f"semantic ID levels out of order in {text!r}")
    return tuple(int(code) for _, code in found)


def format_sid(codes: Sequence[int]) -> str:
    """Inverse of :func:`parse_sid`.

    Example:
        >>> format_sid((12, 7, 3))
        '<a_12><b_7><c_3>'
    """
    return "".join(f"<{chr(ord('a') + level)}_{int(c)}>" for level, c in enumerate(codes))


def _group_ids(keys: Iterable[Any]) -> dict[Any, np.ndarray]:
    groups: dict[Any, list[int]] = {}
    for item, key in enumerate(keys):
        groups.setdefault(key, []).append(item)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


@dataclass
class Catalogue:
    """All items of a dataset: ids ``0..num_items-1`` with titles and/or semantic IDs.

    Titles and semantic IDs both repeat in real data, so :attr:`title_to_items` and
    :attr:`sid_to_items` map each one to the *array* of item ids it denotes.

    Args:
        num_items: number of items N.
        titles: N titles, or None when the source has none (LC-Rec Games).
        sids: (N, L) int array of semantic-ID codes, or None.
        keys: N external ids (e.g. ASINs), or None.

    Example:
        >>> cat = Catalogue(3, titles=["A", "B", "A"])
        >>> cat.title_to_items["A"].tolist()
        [0, 2]
    """

    num_items: int
    titles: list[str] | None = None
    sids: np.ndarray | None = None
    keys: list[str] | None = None

    def __post_init__(self) -> None:
        if self.titles is not None and len(self.titles) != self.num_items:
            raise ValueError(f"{len(self.titles)} titles for {self.num_items} items")
        if self.sids is not None:
            self.sids = np.asarray(self.sids, dtype=np.int32)
            if self.sids.ndim != 2 or len(self.sids) != self.num_items:
                raise ValueError(f"sids must have shape ({self.num_items}, L), got {self.sids.shape}")
        if self.keys is not None and len(self.keys) != self.num_items:
            raise ValueError(f"{len(self.keys)} keys for {self.num_items} items")

    @cached_property
    def title_to_items(self) -> dict[str, np.ndarray]:
        """Title -> sorted item ids with that title (empty when there are no titles)."""
        return _group_ids(self.titles or ())

    @cached_property
    def sid_to_items(self) -> dict[tuple[int, ...], np.ndarray]:
        """Semantic-ID code tuple -> sorted item ids with that SID (empty when there are none)."""
        if self.sids is None:
            return {}
        return _group_ids(map(tuple, self.sids.tolist()))

    def sid_string(self, item: int) -> str:
        """The item's semantic ID as tokens, e.g. ``"<a_12><b_7><c_3>"``."""
        if self.sids is None:
            raise ValueError("this catalogue has no semantic IDs")
        return format_sid(self.sids[item])


@dataclass
class Examples:
    """One split: a column of recommendation requests as numpy arrays.

    Row i is: user ``user[i]`` (index into ``Dataset.users``, or -1 when unknown) saw the items
    ``history[i, :history_len[i]]`` (oldest first, -1 padded after) and then chose ``target[i]``
    at ``timestamp[i]`` (unix seconds, -1 when unknown).

    Example:
        >>> ex = Examples.from_lists(histories=[[1, 2], [3]], targets=[3, 4], max_history=4)
        >>> ex.history.tolist(), ex.history_len.tolist()
        ([[1, 2, -1, -1], [3, -1, -1, -1]], [2, 1])
    """

    user: np.ndarray
    history: np.ndarray
    history_len: np.ndarray
    target: np.ndarray
    timestamp: np.ndarray

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.history = np.asarray(self.history, dtype=np.int32)
        self.history_len = np.asarray(self.history_len, dtype=np.int32)
        self.target = np.asarray(self.target, dtype=np.int32)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        n = len(self.target)
        if self.history.ndim != 2 or len(self.history) != n:
            raise ValueError(f"history must have shape ({n}, max_history), got {self.history.shape}")
        for name in ("user", "history_len", "timestamp"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")

    def __len__(self) -> int:
        return len(self.target)

    @property
    def max_history(self) -> int:
        return self.history.shape[1]

    def histories(self) -> list[list[int]]:
        """Histories as Python lists (for display and small jobs, not hot paths)."""
        return [row[:n].tolist() for row, n in zip(self.history, self.history_len)]

    def subset(self, index: np.ndarray | slice) -> Examples:
        """Rows selected by an index array, boolean mask or slice."""
        return Examples(
            self.user[index], self.history[index], self.history_len[index],
            self.target[index], self.timestamp[index],
        )

    @classmethod
    def empty(cls, max_history: int) -> Examples:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, np.zeros((0, max_history), np.int32), z, z, z)

    @classmethod
    def from_lists(
        cls,
        histories: Sequence[Sequence[int]],
        targets: Sequence[int],
        max_history: int,
        users: Sequence[int] | None = None,
        timestamps: Sequence[int] | None = None,
    ) -> Examples:
        """Build from Python lists; histories longer than ``max_history`` keep their newest items."""
        n = len(targets)
        lens = np.fromiter((min(len(h), max_history) for h in histories), np.int32, count=n)
        check_window_memory(n, max_history, int(lens.max()) if n else 0)
        flat = np.fromiter(
            (x for h in histories for x in h[len(h) - min(len(h), max_history):]),
            np.int32, count=int(lens.sum()),
        )
        history = np.full((n, max_history), PAD, np.int32)
        history[np.arange(max_history) < lens[:, None]] = flat
        return cls(
            user=np.full(n, PAD) if users is None else users,
            history=history,
            history_len=lens,
            target=targets,
            timestamp=np.full(n, PAD) if timestamps is None else timestamps,
        )

    @classmethod
    def concat(cls, parts: Sequence[Examples]) -> Examples:
        """Concatenate splits with the same ``max_history``."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _EXAMPLE_FIELDS))


_EXAMPLE_FIELDS = ("user", "history", "history_len", "target", "timestamp")


def check_window_memory(rows: int, max_history: int, longest: int) -> None:
    """Refuse a history window whose arrays cannot fit in memory, naming ``max_history``, before they are
    allocated (``rows`` examples of ``max_history`` slots, about 21 bytes a slot while windows are cut;
    ``longest``: the longest history kept, the useful window).

    Example:
        >>> check_window_memory(1000, 10, 8)  # 210 kB
    """
    from recgym._checks import check_memory

    useful = max(longest, 1)
    check_memory(21 * rows * max_history, f"max_history={max_history}",
                 f"the history windows of {rows} examples",
                 f"the longest history here has {longest} items: a longer window only adds padding (use "
                 f"--max-history {useful} or --set max_history={useful})")


def sequence_windows(
    items: np.ndarray, starts: np.ndarray, positions: np.ndarray, max_history: int
) -> tuple[np.ndarray, np.ndarray]:
    """Histories for targets inside concatenated sequences, without a Python loop per row.

    ``items`` holds all sequences back to back; ``starts[j]`` is where target j's sequence starts
    in ``items`` and ``positions[j]`` is the target's flat index. The history is the up to
    ``max_history`` items before the target in the same sequence, oldest first, left-aligned.

    Example:
        >>> h, n = sequence_windows(np.array([5, 6, 7, 8]), np.array([0, 0]), np.array([1, 3]), 2)
        >>> h.tolist(), n.tolist()
        ([[5, -1], [6, 7]], [1, 2])
    """
    positions = np.asarray(positions, dtype=np.int64)
    lens = np.minimum(positions - np.asarray(starts, dtype=np.int64), max_history)
    check_window_memory(len(positions), max_history, int(lens.max()) if len(lens) else 0)
    offsets = np.arange(max_history)
    cols = positions[:, None] - lens[:, None] + offsets
    valid = offsets < lens[:, None]
    history = np.where(valid, np.asarray(items)[np.where(valid, cols, 0)], PAD)
    return history.astype(np.int32), lens.astype(np.int32)


def temporal_split(
    n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[slice, slice, slice]:
    """Contiguous train / valid / test slices of n time-sorted rows (the D3 8:1:1 protocol).

    Example:
        >>> temporal_split(10)
        (slice(0, 8, None), slice(8, 9, None), slice(9, 10, None))
    """
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    return slice(0, a), slice(a, b), slice(b, n)


@dataclass
class Dataset:
    """A catalogue and its train / valid / test examples.

    Args:
        name: short name, e.g. ``"games-lcrec"``.
        catalogue: the items.
        train, valid, test: the splits (any may be empty, e.g. D3 folders without train).
        users: external user ids indexed by ``Examples.user``, or None.
        info: provenance and protocol (JSON-serialisable).

    Example:
        >>> from recgym.data import load
        >>> ds = load("synthetic", num_items=200, num_users=300)
        >>> ds.describe()["items"]
        200
    """

    name: str
    catalogue: Catalogue
    train: Examples
    valid: Examples
    test: Examples
    users: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Examples:
        """The split called ``name`` (train, valid or test)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    @property
    def max_history(self) -> int:
        return self.test.max_history

    def validate(self) -> None:
        """Check that every id is in range; raise ValueError naming the split and row."""
        n = self.catalogue.num_items
        for s in SPLITS:
            ex = self.split(s)
            bad = np.flatnonzero((ex.target < 0) | (ex.target >= n))
            if bad.size:
                raise ValueError(f"{self.name}: {s} row {bad[0]} has target {ex.target[bad[0]]} "
                                 f"outside 0..{n - 1}")
            valid = np.arange(ex.max_history) < ex.history_len[:, None]
            out = valid & ((ex.history < 0) | (ex.history >= n))
            if out.any():
                row = int(np.flatnonzero(out.any(axis=1))[0])
                raise ValueError(f"{self.name}: {s} row {row} has a history item outside 0..{n - 1}")

    def describe(self) -> dict[str, Any]:
        """Users, items, examples per split, history-length and item-popularity summaries."""
        cat = self.catalogue
        out: dict[str, Any] = {
            "name": self.name,
            "items": cat.num_items,
            "users": len(self.users) if self.users is not None else None,
            "titles": None if cat.titles is None else len(cat.title_to_items),
            "sids": None if cat.sids is None else len(cat.sid_to_items),
            "sid_levels": None if cat.sids is None else int(cat.sids.shape[1]),
            "max_history": self.max_history,
            "splits": {},
        }
        counts = np.zeros(cat.num_items, dtype=np.int64)
        for s in SPLITS:
            ex = self.split(s)
            lens = ex.history_len
            known_users = ex.user[ex.user >= 0]
            out["splits"][s] = {
                "examples": len(ex),
                "users": int(np.unique(known_users).size) if known_users.size else None,
                "distinct_targets": int(np.unique(ex.target).size),
                "history_len_mean": round(float(lens.mean()), 3) if len(ex) else None,
                "history_len_min": int(lens.min()) if len(ex) else None,
                "history_len_max": int(lens.max()) if len(ex) else None,
            }
            counts += np.bincount(ex.target, minlength=cat.num_items)
        total = counts.sum()
        order = np.sort(counts)[::-1]
        out["target_popularity"] = {
            "items_never_a_target": int((counts == 0).sum()),
            "top_1pct_share": round(float(order[: max(1, cat.num_items // 100)].sum() / max(total, 1)), 4),
            "max_count": int(order[0]) if order.size else 0,
            "median_count": float(np.median(counts)) if counts.size else 0.0,
        }
        return out

    # -- cache ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the dataset to one ``.npz`` file, atomically (temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cat = self.catalogue
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps({
                "version": CACHE_VERSION, "name": self.name, "num_items": cat.num_items,
                "info": self.info,
            }).encode(), dtype=np.uint8),
        }
        for key, strings in (("titles", cat.titles), ("keys", cat.keys), ("users", self.users)):
            if strings is not None:
                arrays[key + "_bytes"], arrays[key + "_offsets"] = _pack_strings(strings)
        if cat.sids is not None:
            arrays["sids"] = cat.sids
        for s in SPLITS:
            for f in _EXAMPLE_FIELDS:
                arrays[f"{s}.{f}"] = getattr(self.split(s), f)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Dataset:
        """Read a file written by :meth:`save`.

        Any damage (an empty or truncated file, a file that is not an ``.npz``, missing or
        inconsistent arrays, another cache version) raises :class:`DataFormatError` naming the
        file, so callers that cache can rebuild on that one exception.

        Example:
            >>> import tempfile
            >>> bad = Path(tempfile.mkdtemp()) / "empty.npz"
            >>> _ = bad.write_bytes(b"")
            >>> Dataset.load(bad)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            recgym.data.dataset.DataFormatError: .../empty.npz: not a readable recgym cache (EOFError: ...)
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                if meta.get("version") != CACHE_VERSION:
                    raise DataFormatError(path, f"cache version {meta.get('version')}, "
                                          f"expected {CACHE_VERSION}", key="meta")
                strings = {
                    key: _unpack_strings(z[key + "_bytes"], z[key + "_offsets"])
                    if key + "_bytes" in z else None
                    for key in ("titles", "keys", "users")
                }
                splits = {
                    s: Examples(*(z[f"{s}.{f}"] for f in _EXAMPLE_FIELDS)) for s in SPLITS
                }
                catalogue = Catalogue(
                    meta["num_items"], titles=strings["titles"],
                    sids=z["sids"] if "sids" in z else None, keys=strings["keys"],
                )
                return cls(meta["name"], catalogue, users=strings["users"], info=meta["info"], **splits)
        except DataFormatError:
            raise
        except (OSError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError,
                zipfile.BadZipFile, zlib.error, UnicodeDecodeError) as err:
            raise DataFormatError(path, f"not a readable recgym cache ({type(err).__name__}: {err})") from err


def _pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    bounds = offsets.tolist()
    return [raw[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]
