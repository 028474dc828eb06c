"""Readers for the published recommendation data formats, all returning a :class:`Dataset`.

* :func:`read_d3`: D3 / BIGRec / ReRe 11-column CSV splits plus a ``title<TAB>id`` catalogue.
* :func:`read_lcrec`: LC-Rec ``*.inter.json`` sequences, ``*.item2id`` ASINs, ``*.index.json`` SIDs.
* :func:`read_sprec`: SPRec Goodreads ``train.json`` prompts plus ``id2name.json``.
* :func:`detect_format` / :func:`read_folder`: pick the reader from a folder's files.

Every problem with the input raises :class:`DataFormatError` naming the file and, where known, the
line (1-based, the CSV header is line 1) or the JSON key.
"""

from __future__ import annotations

import ast
import csv
import itertools
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recgym.data.dataset import (
    Catalogue,
    DataFormatError,
    Dataset,
    Examples,
    parse_sid,
    sequence_windows,
    temporal_split,
)

__all__ = ["FORMATS", "detect_format", "read_d3", "read_folder", "read_lcrec", "read_sprec"]

PathLike = str | os.PathLike[str]


# -- shared helpers ----------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not UTF-8 text ({err})") from err


def _text_lines(path: Path) -> list[str]:
    """Lines of a text file; LF or CRLF, final newline optional. Only ``\\n`` ends a line."""
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_tab_map(path: Path, what: str) -> list[str]:
    """``value<TAB>index`` lines with indexes 0..N-1 in order (split on the last tab) -> values."""
    lines = _text_lines(path)
    if not lines:
        raise DataFormatError(path, f"empty {what} file")
    parts = [line.rpartition("\t") for line in lines]
    if [p[2] for p in parts] == list(map(str, range(len(parts)))) and all(p[1] for p in parts):
        return [p[0] for p in parts]
    for number, (value, tab, index) in enumerate(parts, start=1):  # slow path: find the bad line
        if not tab:
            raise DataFormatError(path, f"expected '<{what}><TAB><index>', got {value[:80]!r}", line=number)
        if index.strip() != str(number - 1):
            raise DataFormatError(path, f"expected index {number - 1} (indexes must run 0..N-1 in order), "
                                  f"got {index!r}", line=number)
    return [p[0] for p in parts]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
                              line=err.lineno) from err


def _at_most_one(paths: Sequence[Path], where: Path, what: str) -> Path | None:
    if len(paths) > 1:
        raise DataFormatError(where, f"several {what} files: {', '.join(sorted(p.name for p in paths))}")
    return paths[0] if paths else None


def _exactly_one(paths: Sequence[Path], where: Path, what: str) -> Path:
    found = _at_most_one(paths, where, what)
    if found is None:
        raise DataFormatError(where, f"no {what} file found")
    return found


def _check_max_history(max_history: int) -> None:
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ValueError(f"max_history must be a positive int, got {max_history!r}")


def _dataset_name(folder: Path, name: str | None) -> str:
    return name if name is not None else folder.resolve().name


def _as_int(value: Any, what: str = "value") -> int:
    """An int from an int, an integral float or a numeric string; ValueError naming ``what`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number: Any = value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = None
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise ValueError(f"{what} is not an integer: {value!r}")


# -- D3 / BIGRec / ReRe CSV --------------------------------------------------------------------

D3_COLUMNS = (
    "user_id", "item_asins", "item_asin", "history_item_id", "item_id", "history_item_title",
    "item_title", "history_rating", "rating", "history_timestamp", "timestamp",
)
_D3_LIST_COLUMNS = ("item_asins", "history_item_id", "history_item_title", "history_rating",
                    "history_timestamp")


def _literal_list(text: str, column: str) -> list[Any]:
    """A Python-literal list (ValueError naming ``column`` otherwise). Lists without quotes (numbers)
    take the faster ``json`` parser, which reads them identically; the rest go to ``ast.literal_eval``."""
    value: Any = None
    if "'" not in text and '"' not in text:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
    if not isinstance(value, list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise ValueError(f"column {column} is not a Python literal ({type(err).__name__}: {err}): "
                             f"{text[:80]!r}") from err
    if not isinstance(value, list):
        raise ValueError(f"column {column} is not a list: {text[:80]!r}")
    return value


def _d3_split_file(folder: Path, split: str) -> Path | None:
    sub = folder / split
    if sub.is_dir():
        found = _at_most_one(sorted(sub.glob("*.csv")), sub, f"{split} CSV")
        if found is not None:
            return found
    flat = folder / f"{split}.csv"
    return flat if flat.is_file() else None


def _d3_info_file(folder: Path) -> Path:
    info_dir = folder / "info"
    if info_dir.is_dir() and list(info_dir.glob("*.txt")):
        return _exactly_one(sorted(info_dir.glob("*.txt")), info_dir, "info .txt")
    found = sorted(folder.glob("*.txt"))
    if not found:
        raise DataFormatError(folder, "no item catalogue: looked for info/*.txt and *.txt "
                              "(lines 'title<TAB>item_id')")
    return _exactly_one(found, folder, "catalogue .txt")


def _read_d3_csv(
    path: Path, num_items: int, user_index: dict[str, int], max_history: int
) -> Examples:
    histories: list[list[int]] = []
    targets: list[int] = []
    users: list[int] = []
    timestamps: list[int] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFormatError(path, "empty file (expected a header row)") from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataFormatError(path, f"unreadable CSV header ({err})", line=1) from err
        missing = [c for c in D3_COLUMNS if c not in header]
        if missing:
            raise DataFormatError(path, f"missing column(s) {', '.join(missing)}; "
                                  f"expected the 11 D3 columns {', '.join(D3_COLUMNS)}", line=1)
        col = {c: header.index(c) for c in D3_COLUMNS}
        list_cols = [(c, col[c]) for c in _D3_LIST_COLUMNS]
        width = len(header)
        last_line = reader.line_num
        while True:
            line = last_line + 1  # the row's first physical line (quoted fields may span lines)
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as err:
                raise DataFormatError(path, f"unreadable CSV row ({err})", line=line) from err
            last_line = reader.line_num
            if not row:
                continue
            if len(row) != width:
                raise DataFormatError(path, f"expected {width} columns, got {len(row)}", line=line)
            try:
                lists = {name: _literal_list(row[i], name) for name, i in list_cols}
                lengths = {len(v) for v in lists.values()}
                if len(lengths) != 1:
                    raise ValueError("list columns have different lengths: " + ", ".join(
                        f"{k}={len(v)}" for k, v in lists.items()))
                history = [_as_int(x, "history_item_id element") for x in lists["history_item_id"]]
                target = _as_int(row[col["item_id"]], "item_id")
                timestamp = _as_int(row[col["timestamp"]], "timestamp")
            except ValueError as err:
                raise DataFormatError(path, f"malformed row: {err}", line=line) from err
            for item in (*history, target):
                if not 0 <= item < num_items:
                    raise DataFormatError(path, f"item id {item} outside the catalogue 0..{num_items - 1}",
                                          line=line)
            histories.append(history)
            targets.append(target)
            users.append(user_index.setdefault(row[col["user_id"]], len(user_index)))
            timestamps.append(timestamp)
    if not targets:
        raise DataFormatError(path, "no data rows after the header")
    return Examples.from_lists(histories, targets, max_history, users=users, timestamps=timestamps)


def read_d3(folder: PathLike, *, max_history: int = 10, name: str | None = None) -> Dataset:
    """Read D3 / BIGRec / ReRe CSV splits and their ``title<TAB>id`` catalogue.

    Layout: ``info/*.txt`` (one catalogue) and ``valid/*.csv``, ``test/*.csv``, optionally
    ``train/*.csv`` (one CSV per split folder). A flat folder with ``valid.csv``, ``test.csv``,
    optional ``train.csv`` and a single ``*.txt`` catalogue also works. Without a train CSV the
    train split is empty (the published Office / Industrial data has none).

    Each CSV row is one example: ``history_item_id`` (oldest first; only the newest
    ``max_history`` are kept) then ``item_id`` at ``timestamp``. Rows keep their file order (D3
    sorts them by target time and cuts 8:1:1). ``user_id`` strings become indexes into
    ``Dataset.users`` (numbered in order of first appearance, train then valid then test). The
    catalogue has titles only (``keys`` is None); titles in the CSV are not checked against it.

    Example:
        >>> ds = read_d3("../shared/data/office-d3")  # doctest: +SKIP
        >>> len(ds.valid), len(ds.test), ds.catalogue.num_items  # doctest: +SKIP
        (4866, 4866, 3459)
    """
    _check_max_history(max_history)
    folder = Path(folder)
    info_path = _d3_info_file(folder)
    titles = _read_tab_map(info_path, "title")
    catalogue = Catalogue(len(titles), titles=titles)
    user_index: dict[str, int] = {}
    splits: dict[str, Examples] = {}
    files: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        path = _d3_split_file(folder, split)
        if path is None:
            if split == "train":
                splits[split] = Examples.empty(max_history)
                continue
            raise DataFormatError(folder, f"no {split} CSV: looked for {split}/*.csv and {split}.csv")
        files[split] = str(path)
        splits[split] = _read_d3_csv(path, catalogue.num_items, user_index, max_history)
    return Dataset(
        _dataset_name(folder, name), catalogue, users=list(user_index),
        info={
            "format": "d3", "source": str(folder), "catalogue": str(info_path), "files": files,
            "split": "D3: per user each interaction after the first is a target with up to 10 previous "
                     "items as history; all rows sorted by target time and cut 8:1:1 into "
                     "train/valid/test (as published)",
        },
        **splits,
    )


# -- LC-Rec JSON -------------------------------------------------------------------------------


def _lcrec_prefix(folder: Path) -> tuple[Path, str]:
    inter = _exactly_one(sorted(folder.glob("*.inter.json")), folder, "*.inter.json")
    return inter, inter.name[: -len(".inter.json")]


def _lcrec_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user idx per sequence, sequence lengths, all items back to back), sorted by user idx."""
    data = _load_json(path)
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


def _lcrec_sids(path: Path, num_items: int) -> np.ndarray:
    """``{item_idx: ["<a_1>", "<b_2>", ...]}`` -> (num_items, levels) codes; every item needs one."""
    index = _load_json(path)
    if not isinstance(index, dict):
        raise DataFormatError(path, "expected a JSON object {item_idx: [sid tokens]}")
    fast = _lcrec_sids_fast(index, num_items)
    if fast is not None:
        return fast
    codes: list[tuple[int, ...]] = [()] * num_items  # slow path: parse item by item, report the bad one
    for key, tokens in index.items():
        try:
            item = int(key)
            if not 0 <= item < num_items:
                raise ValueError(f"item idx outside 0..{num_items - 1} (the item2id range)")
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
    meta = _load_json(path)
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
    """Read LC-Rec data (``X.inter.json``, ``X.item2id``, ``X.index.json``, optional
    ``X.user2id`` and ``X.item.json``) with the LC-Rec leave-one-out split.

    Per user with items ``s[0..L-1]`` (chronological): the test target is ``s[L-1]``, the valid
    target ``s[L-2]`` and the train targets are ``s[1..L-3]`` (every prefix of ``s[:-2]``); each
    history is the up to ``max_history`` items just before the target. So a user gives
    ``L - 3`` train examples (test needs ``L >= 2``, valid ``L >= 3``). Examples are sorted by
    user, then by position. The catalogue has ASIN keys, semantic IDs and, when ``X.item.json``
    exists, titles. Users come from ``X.user2id`` (indexed by user idx) or are the idx strings.
    Timestamps are unknown (-1).

    Example:
        >>> ds = read_lcrec("../shared/data/games-lcrec")  # doctest: +SKIP
        >>> len(ds.train), len(ds.valid), len(ds.test), ds.catalogue.sids.shape  # doctest: +SKIP
        (301351, 50546, 50546, (16859, 4))
    """
    _check_max_history(max_history)
    folder = Path(folder)
    inter_path, prefix = _lcrec_prefix(folder)
    item2id = folder / f"{prefix}.item2id"
    index_path = folder / f"{prefix}.index.json"
    for path in (item2id, index_path):
        if not path.is_file():
            raise DataFormatError(path, f"missing: LC-Rec needs {path.name} next to {inter_path.name}")
    keys = _read_tab_map(item2id, "ASIN")
    num_items = len(keys)
    sids = _lcrec_sids(index_path, num_items)
    item_json = folder / f"{prefix}.item.json"
    titles = _lcrec_titles(item_json, num_items) if item_json.is_file() else None

    user_keys, lengths, items = _lcrec_sequences(inter_path)
    user2id = folder / f"{prefix}.user2id"
    if user2id.is_file():
        users = _read_tab_map(user2id, "user")
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
        _dataset_name(folder, name), Catalogue(num_items, titles=titles, sids=sids, keys=keys),
        train, valid, test, users=users,
        info={
            "format": "lcrec", "source": str(folder), "interactions": int(lengths.sum()),
            "split": "LC-Rec leave-one-out: per user the last item is the test target, the second-to-last "
                     "the valid target, and every prefix of items[:-2] gives a train example",
        },
    )


# -- SPRec Goodreads JSON ----------------------------------------------------------------------

_SPREC_INPUT = re.compile(r'.*?before:\s*"(?P<titles>.*)",\s*please', re.DOTALL)
_SEP = '", "'


def _split_titles(text: str, title_to_id: dict[str, int]) -> tuple[list[int], int]:
    """Item ids of the ``", "``-joined titles, and how many titles were not in the catalogue.

    A piece that is not a title is joined with the following pieces when that gives a catalogue
    title (titles may contain ``", "``); otherwise it is dropped.
    """
    pieces = text.split(_SEP)
    ids: list[int] = []
    dropped = 0
    i = 0
    while i < len(pieces):
        item = title_to_id.get(pieces[i])
        step = 1
        if item is None:
            for j in range(i + 2, len(pieces) + 1):
                item = title_to_id.get(_SEP.join(pieces[i:j]))
                if item is not None:
                    step = j - i
                    break
        if item is None:
            dropped += 1
        else:
            ids.append(item)
        i += step
    return ids, dropped


def read_sprec(folder: PathLike, *, max_history: int = 10, name: str | None = None, seed: int = 0) -> Dataset:
    """Read SPRec Goodreads ``train.json`` prompts with the ``id2name.json`` catalogue.

    Each record's ``input`` lists the history as quoted titles
    (``... before: "A", "B", ..., please write ...``) and its ``output`` is the quoted target
    title. Titles map to ids through ``name2id.json`` when present, else the inverted
    ``id2name.json``. History titles not in the catalogue are dropped (counted in
    ``info["dropped_history_titles"]``); a target not in the catalogue is an error.

    Only train.json is published, so the split is ours: records are shuffled with
    ``np.random.default_rng(seed).permutation`` and the shuffled order is cut 8:1:1 into
    train / valid / test (:func:`temporal_split`). Users and timestamps are unknown (-1).

    Example:
        >>> ds = read_sprec("../shared/data/goodreads-sprec")  # doctest: +SKIP
        >>> len(ds.train), len(ds.valid), len(ds.test), ds.info["dropped_history_titles"]  # doctest: +SKIP
        (4000, 500, 500, 10)
    """
    _check_max_history(max_history)
    folder = Path(folder)
    id2name_path = folder / "id2name.json"
    train_path = folder / "train.json"
    for path in (id2name_path, train_path):
        if not path.is_file():
            raise DataFormatError(path, "missing: SPRec needs train.json and id2name.json")
    id2name = _load_json(id2name_path)
    if not isinstance(id2name, dict):
        raise DataFormatError(id2name_path, "expected a JSON object {id: title}")
    slots: list[str | None] = [None] * len(id2name)
    for key, title in id2name.items():
        try:
            item = int(key)
        except ValueError:
            item = -1
        if not 0 <= item < len(slots) or not isinstance(title, str) or slots[item] is not None:
            raise DataFormatError(id2name_path, "ids must be 0..N-1, each once, with string titles", key=key)
        slots[item] = title
    titles = [t for t in slots if t is not None]  # all of them: N distinct ids in 0..N-1
    name2id_path = folder / "name2id.json"
    if name2id_path.is_file():
        name2id = _load_json(name2id_path)
        if not isinstance(name2id, dict):
            raise DataFormatError(name2id_path, "expected a JSON object {title: id}")
        title_to_id: dict[str, int] = {}
        for title, item in name2id.items():
            try:
                title_to_id[title] = _as_int(item, "id")
            except ValueError as err:
                raise DataFormatError(name2id_path, str(err), key=title) from err
            if not 0 <= title_to_id[title] < len(titles):
                raise DataFormatError(name2id_path, f"id outside 0..{len(titles) - 1}", key=title)
    else:
        title_to_id = {}
        for item, title in enumerate(titles):
            title_to_id.setdefault(title, item)

    records = _load_json(train_path)
    if not isinstance(records, list):
        raise DataFormatError(train_path, "expected a JSON list of {instruction, input, output} records")
    histories: list[list[int]] = []
    targets: list[int] = []
    dropped = 0
    for k, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("input"), str) or not isinstance(
                record.get("output"), str):
            raise DataFormatError(train_path, "record needs string 'input' and 'output'", key=k)
        match = _SPREC_INPUT.match(record["input"])
        if match is None:
            raise DataFormatError(train_path, "input is not '... before: \"title\", ..., please ...': "
                                  f"{record['input'][:80]!r}", key=k)
        history, n_dropped = _split_titles(match["titles"], title_to_id)
        dropped += n_dropped
        out = record["output"].strip()
        if len(out) >= 2 and out[0] == out[-1] == '"':
            out = out[1:-1]
        target = title_to_id.get(out)
        if target is None:
            raise DataFormatError(train_path, f"target title {out[:80]!r} is not in the catalogue", key=k)
        histories.append(history)
        targets.append(target)
    if not targets:
        raise DataFormatError(train_path, "no records")
    examples = Examples.from_lists(histories, targets, max_history)
    order = np.random.default_rng(seed).permutation(len(examples))
    train, valid, test = (examples.subset(order[s]) for s in temporal_split(len(order)))
    return Dataset(
        _dataset_name(folder, name), Catalogue(len(titles), titles=titles),
        train, valid, test, users=None,
        info={
            "format": "sprec", "source": str(folder), "dropped_history_titles": dropped, "seed": seed,
            "split": f"SPRec train.json only: records shuffled with np.random.default_rng({seed})"
                     ".permutation, then cut 8:1:1 into train/valid/test",
        },
    )


# -- dispatch ----------------------------------------------------------------------------------

FORMATS: dict[str, Callable[..., Dataset]] = {"d3": read_d3, "lcrec": read_lcrec, "sprec": read_sprec}


def detect_format(folder: PathLike) -> str:
    """The format of a data folder: ``"lcrec"``, ``"sprec"`` or ``"d3"``.

    LC-Rec has a ``*.inter.json``; SPRec has ``train.json`` and ``id2name.json``; D3 has
    ``test/*.csv``, ``test.csv`` or ``info/*.txt``.

    Example:
        >>> detect_format("../shared/data/office-d3")  # doctest: +SKIP
        'd3'
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "not a folder")
    if any(folder.glob("*.inter.json")):
        return "lcrec"
    if (folder / "train.json").is_file() and (folder / "id2name.json").is_file():
        return "sprec"
    if any((folder / "test").glob("*.csv")) or (folder / "test.csv").is_file() or any(
            (folder / "info").glob("*.txt")):
        return "d3"
    raise DataFormatError(folder, "unknown data format: looked for *.inter.json (lcrec), "
                          "train.json + id2name.json (sprec), test/*.csv, test.csv or info/*.txt (d3)")


def read_folder(folder: PathLike, format: str | None = None, **kw: Any) -> Dataset:
    """Read a data folder with the reader for ``format`` (detected when None).

    Keyword arguments go to the reader (``max_history``, ``name``, ``seed`` for SPRec).

    Example:
        >>> ds = read_folder("../shared/data/goodreads-sprec", max_history=5)  # doctest: +SKIP
        >>> ds.info["format"], ds.max_history  # doctest: +SKIP
        ('sprec', 5)
    """
    fmt = detect_format(folder) if format is None else format
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return FORMATS[fmt](folder, **kw)
