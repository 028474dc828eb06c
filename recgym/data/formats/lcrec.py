"""LC-Rec JSON data (Zheng et al. 2024): ``X.inter.json`` sequences, ``X.index.json`` semantic IDs,
optional ``X.item2id`` ASINs, ``X.user2id`` user ids and ``X.item.json`` titles.

``X.item2id`` only carries external ids: item ids are the keys of ``X.index.json``, so a folder
with just ``X.inter.json`` and ``X.index.json`` (as the LETTER / TIGER releases ship them) is read
too, with ``catalogue.keys`` None.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np

from recgym.data.checks import check_max_history
from recgym.data.dataset import Catalogue, DataFormatError, Dataset, Examples, parse_sid, sequence_windows
from recgym.data.formats.common import (
    FormatSpec,
    PathLike,
    dataset_name,
    exactly_one,
    load_json,
    read_tab_map,
)

__all__ = ["FORMAT", "detect", "read_lcrec"]


def _lcrec_prefix(folder: Path) -> tuple[Path, str]:
    inter = exactly_one(sorted(folder.glob("*.inter.json")), folder, "*.inter.json")
    return inter, inter.name[: -len(".inter.json")]


def _lcrec_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user idx per sequence, sequence lengths, all items back to back), sorted by user idx."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a JSON object {{user: [items]}}, got {type(data).__name__}")
    if not data:
        raise DataFormatError(path, "no user sequences")
    keys = list(data)
    values = list(data.values())
    for key, value in data.items():
        if not isinstance(value, list):
            raise DataFormatError(path, f"expected a list of item ids, got {type(value).__name__}", key=key)
    try:
        key_ints = np.fromiter(map(int, keys), np.int64, count=len(keys))
    except ValueError as err:
        raise DataFormatError(path, f"user keys must be integers ({err})") from err
    if len(np.unique(key_ints)) != len(key_ints):
        raise DataFormatError(path, "user keys repeat as integers (e.g. '1' and '01')")
    order = np.argsort(key_ints, kind="stable")
    keys = [keys[i] for i in order]
    values = [values[i] for i in order]
    # np.fromiter would silently turn 1.5 or "7" into an int, so check the element types first
    if set(map(type, itertools.chain.from_iterable(values))) - {int}:
        for key, value in zip(keys, values, strict=True):
            if any(type(x) is not int for x in value):
                raise DataFormatError(path, f"item ids must be integers, got {value[:10]!r}", key=key)
    lengths = np.fromiter(map(len, values), np.int64, count=len(values))
    try:
        flat = np.fromiter(itertools.chain.from_iterable(values), np.int64, count=int(lengths.sum()))
    except OverflowError as err:
        raise DataFormatError(path, f"item id too large ({err})") from err
    return key_ints[order], lengths, flat


def _lcrec_sids(path: Path, num_items: int | None, item2id_name: str) -> np.ndarray:
    """``{item_idx: ["<a_1>", "<b_2>", ...]}`` -> (num_items, levels) codes; every item needs one.

    ``num_items`` None (no item2id file): the items are the index keys, which must be 0..N-1."""
    index = load_json(path)
    if not isinstance(index, dict):
        raise DataFormatError(path, "expected a JSON object {item_idx: [sid tokens]}")
    if num_items is None:
        if not index:
            raise DataFormatError(path, "no items (and no item2id file to define them)")
        num_items = len(index)
        bounds = f"without {item2id_name} the index keys must be 0..{num_items - 1}"
    else:
        bounds = f"the {item2id_name} range"
    fast = _lcrec_sids_fast(index, num_items)
    if fast is not None:
        return fast
    codes: list[tuple[int, ...]] = [()] * num_items  # slow path: parse item by item, report the bad one
    for key, tokens in index.items():
        try:
            item = int(key)
            if not 0 <= item < num_items:
                raise ValueError(f"item idx outside 0..{num_items - 1} ({bounds})")
            codes[item] = parse_sid(tokens)
        except (ValueError, TypeError) as err:
            raise DataFormatError(path, str(err), key=key) from err
    for item, code in enumerate(codes):
        if not code:
            raise DataFormatError(path, "item has no semantic ID", key=str(item))
        if len(code) != len(codes[0]):
            raise DataFormatError(path, f"{len(code)} SID levels, item 0 has {len(codes[0])}", key=str(item))
    return np.array(codes, dtype=np.int32).reshape(num_items, -1)


def _lcrec_sids_fast(index: dict[str, Any], num_items: int) -> np.ndarray | None:
    """Parse all SIDs with one regex when the file is well formed (keys 0..N-1 once each, every SID
    ``<a_*><b_*>...`` with the same number of levels); None means "use the slow path"."""
    if len(index) != num_items or num_items == 0:
        return None
    try:
        items = np.fromiter(map(int, index), np.int64, count=num_items)
        text = "\n".join("".join(tokens) for tokens in index.values())
        levels = len(parse_sid(next(iter(index.values()))))
    except (ValueError, TypeError):
        return None
    if not np.array_equal(np.sort(items), np.arange(num_items)) or text.count("\n") != num_items - 1:
        return None
    line = "".join(f"<{chr(ord('a') + level)}_(\\d+)>" for level in range(levels))
    found = re.findall(f"^{line}$", text, flags=re.MULTILINE)
    if len(found) != num_items:
        return None
    codes = np.empty((num_items, levels), np.int32)
    codes[items] = np.array(found, dtype=np.int64).reshape(num_items, levels)
    return codes


def _lcrec_titles(path: Path, num_items: int) -> list[str]:
    """``{item_idx: {"title": ...}}`` -> titles; every item needs one."""
    meta = load_json(path)
    if not isinstance(meta, dict):
        raise DataFormatError(path, "expected a JSON object {item_idx: {'title': ...}}")
    titles: list[str | None] = [None] * num_items
    for key, value in meta.items():
        try:
            item = int(key)
        except ValueError:
            item = -1
        title = value.get("title") if isinstance(value, dict) else None
        if not 0 <= item < num_items or not isinstance(title, str):
            raise DataFormatError(path, f"expected an item idx in 0..{num_items - 1} with a string 'title'",
                                  key=key)
        titles[item] = title
    out = [t for t in titles if t is not None]
    if len(out) != num_items:
        raise DataFormatError(path, "item has no title", key=str(titles.index(None)))
    return out


def read_lcrec(folder: PathLike, *, max_history: int = 10, name: str | None = None) -> Dataset:
    """Read LC-Rec data (``X.inter.json``, ``X.index.json``, optional ``X.item2id``, ``X.user2id``
    and ``X.item.json``) with the LC-Rec leave-one-out split.

    Per user with items ``s[0..L-1]`` (chronological): the test target is ``s[L-1]``, the valid
    target ``s[L-2]`` and the train targets are ``s[1..L-3]`` (every prefix of ``s[:-2]``); each
    history is the up to ``max_history`` items just before the target. So a user gives
    ``L - 3`` train examples (test needs ``L >= 2``, valid ``L >= 3``). Examples are sorted by
    user, then by position. Items are the keys 0..N-1 of ``X.index.json``; the catalogue has
    their semantic IDs, the ASIN keys when ``X.item2id`` exists (an ASIN listed twice is an
    error) and titles when ``X.item.json`` exists. A user key repeated in ``X.inter.json`` is an
    error (a JSON reader would silently keep only the last sequence). Users come from
    ``X.user2id`` (indexed by user idx) or are the idx strings.
    Timestamps are unknown (-1).

    Example:
        >>> ds = read_lcrec("../shared/data/games-lcrec")  # doctest: +SKIP
        >>> len(ds.train), len(ds.valid), len(ds.test), ds.catalogue.sids.shape  # doctest: +SKIP
        (301351, 50546, 50546, (16859, 4))
    """
    check_max_history(max_history)
    folder = Path(folder)
    inter_path, prefix = _lcrec_prefix(folder)
    item2id = folder / f"{prefix}.item2id"
    index_path = folder / f"{prefix}.index.json"
    if not index_path.is_file():
        raise DataFormatError(index_path, f"missing: LC-Rec needs {index_path.name} next to "
                              f"{inter_path.name}")
    keys = read_tab_map(item2id, "ASIN", unique=True) if item2id.is_file() else None
    sids = _lcrec_sids(index_path, None if keys is None else len(keys), item2id.name)
    num_items = len(sids)
    item_json = folder / f"{prefix}.item.json"
    titles = _lcrec_titles(item_json, num_items) if item_json.is_file() else None

    user_keys, lengths, items = _lcrec_sequences(inter_path)
    user2id = folder / f"{prefix}.user2id"
    if user2id.is_file():
        users = read_tab_map(user2id, "user", unique=True)
        bad = np.flatnonzero((user_keys < 0) | (user_keys >= len(users)))
        if bad.size:
            raise DataFormatError(inter_path, f"user idx outside 0..{len(users) - 1} (the {user2id.name} "
                                  "range)", key=str(user_keys[bad[0]]))
        user_index = user_keys
    else:
        users = [str(k) for k in user_keys.tolist()]
        user_index = np.arange(len(user_keys), dtype=np.int64)
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    out = np.flatnonzero((items < 0) | (items >= num_items))
    if out.size:
        seq = int(np.searchsorted(starts, out[0], side="right") - 1)
        raise DataFormatError(inter_path, f"unknown item id {items[out[0]]} (catalogue 0..{num_items - 1})",
                              key=str(user_keys[seq]))

    def windows(per_user: np.ndarray, first: np.ndarray) -> Examples:
        """``per_user[u]`` targets for user u at flat positions first[u], first[u]+1, ..."""
        count = int(per_user.sum())
        seq_of = np.repeat(np.arange(len(per_user)), per_user)
        ends = np.cumsum(per_user)
        step = np.arange(count) - np.repeat(ends - per_user, per_user)
        positions = first[seq_of] + step
        history, history_len = sequence_windows(items, starts[seq_of], positions, max_history)
        return Examples(user_index[seq_of], history, history_len, items[positions], np.full(count, -1))

    train = windows(np.maximum(lengths - 3, 0), starts + 1)
    valid = windows((lengths >= 3).astype(np.int64), starts + lengths - 2)
    test = windows((lengths >= 2).astype(np.int64), starts + lengths - 1)
    return Dataset(
        dataset_name(folder, name), Catalogue(num_items, titles=titles, sids=sids, keys=keys),
        train, valid, test, users=users,
        info={
            "format": "lcrec", "source": str(folder), "interactions": int(lengths.sum()),
            "split": "LC-Rec leave-one-out: per user the last item is the test target, the second-to-last "
                     "the valid target, and every prefix of items[:-2] gives a train example",
        },
    )


def detect(folder: Path) -> bool:
    """An LC-Rec folder has a ``*.inter.json``.

    Example:
        >>> detect(Path("../shared/data/games-lcrec"))  # doctest: +SKIP
        True
    """
    return any(folder.glob("*.inter.json"))


FORMAT = FormatSpec(
    name="lcrec",
    description="LC-Rec json: X.inter.json sequences + X.index.json SIDs "
                "(+ X.item2id, X.user2id, X.item.json)",
    detect=detect,
    read=read_lcrec,
    looks_for="*.inter.json",
)
