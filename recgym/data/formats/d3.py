"""D3 / BIGRec / ReRe CSV splits plus a ``title<TAB>id`` catalogue (Bao et al. 2024, "Decoding Matters").

Layout: ``info/*.txt`` (the catalogue) and ``valid/*.csv``, ``test/*.csv``, optionally
``train/*.csv``; or a flat folder with ``valid.csv``, ``test.csv``, optional ``train.csv`` and one
``*.txt`` catalogue. Each CSV has the 11 columns of :data:`D3_COLUMNS`; list columns are Python
literals.
"""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from typing import Any

from recgym.data.checks import check_file_size, check_max_history
from recgym.data.dataset import Catalogue, DataFormatError, Dataset, Examples
from recgym.data.formats.common import (
    FormatSpec,
    PathLike,
    as_int,
    at_most_one,
    dataset_name,
    exactly_one,
    read_tab_map,
)

__all__ = ["D3_COLUMNS", "FORMAT", "detect", "read_d3"]

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
        except (ValueError, RecursionError):
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
        found = at_most_one(sorted(sub.glob("*.csv")), sub, f"{split} CSV")
        if found is not None:
            return found
    flat = folder / f"{split}.csv"
    return flat if flat.is_file() else None


def _d3_info_file(folder: Path) -> Path:
    info_dir = folder / "info"
    if info_dir.is_dir() and list(info_dir.glob("*.txt")):
        return exactly_one(sorted(info_dir.glob("*.txt")), info_dir, "info .txt")
    found = sorted(folder.glob("*.txt"))
    if not found:
        raise DataFormatError(folder, "no item catalogue: looked for info/*.txt and *.txt "
                              "(lines 'title<TAB>item_id')")
    return exactly_one(found, folder, "catalogue .txt")


def _read_d3_csv(
    path: Path, num_items: int, user_index: dict[str, int], max_history: int
) -> Examples:
    histories: list[list[int]] = []
    targets: list[int] = []
    users: list[int] = []
    timestamps: list[int] = []
    check_file_size(path)
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
                history = [as_int(x, "history_item_id element") for x in lists["history_item_id"]]
                target = as_int(row[col["item_id"]], "item_id")
                timestamp = as_int(row[col["timestamp"]], "timestamp")
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
    check_max_history(max_history)
    folder = Path(folder)
    info_path = _d3_info_file(folder)
    titles = read_tab_map(info_path, "title")
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
        dataset_name(folder, name), catalogue, users=list(user_index),
        info={
            "format": "d3", "source": str(folder), "catalogue": str(info_path), "files": files,
            "split": "D3: per user each interaction after the first is a target with up to 10 previous "
                     "items as history; all rows sorted by target time and cut 8:1:1 into "
                     "train/valid/test (as published)",
        },
        **splits,
    )


def detect(folder: Path) -> bool:
    """A D3 folder has ``test/*.csv``, ``test.csv`` or ``info/*.txt``.

    Example:
        >>> detect(Path("../shared/data/office-d3"))  # doctest: +SKIP
        True
    """
    return (any((folder / "test").glob("*.csv")) or (folder / "test.csv").is_file()
            or any((folder / "info").glob("*.txt")))


FORMAT = FormatSpec(
    name="d3",
    description="D3 / BIGRec / ReRe 11-column CSV splits + 'title<TAB>id' catalogue",
    detect=detect,
    read=read_d3,
    looks_for="test/*.csv, test.csv or info/*.txt",
)
