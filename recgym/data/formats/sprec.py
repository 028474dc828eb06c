"""SPRec Goodreads JSON (``train.json`` Alpaca-style prompts plus the ``id2name.json`` catalogue).

Only ``train.json`` is published, so the 8:1:1 split is ours (seeded shuffle).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from recgym.data.checks import check_max_history
from recgym.data.dataset import Catalogue, DataFormatError, Dataset, DataWarning, Examples, temporal_split
from recgym.data.formats.common import FormatSpec, PathLike, as_int, dataset_name, load_json

__all__ = ["FORMAT", "detect", "read_sprec"]

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
    ``info["dropped_history_titles"]``); a target not in the catalogue is an error. A record none
    of whose history titles is in the catalogue is left out (it is not a next-item request any
    more): such records are counted in ``info["dropped_records"]`` and reported with a
    :class:`~recgym.data.dataset.DataWarning`; when that leaves no record at all, it is a
    :class:`DataFormatError`. A key repeated in any JSON object is an error.

    Only train.json is published, so the split is ours: records are shuffled with
    ``np.random.default_rng(seed).permutation`` and the shuffled order is cut 8:1:1 into
    train / valid / test (:func:`temporal_split`). Users and timestamps are unknown (-1).

    Example:
        >>> ds = read_sprec("../shared/data/goodreads-sprec")  # doctest: +SKIP
        >>> len(ds.train), len(ds.valid), len(ds.test), ds.info["dropped_history_titles"]  # doctest: +SKIP
        (4000, 500, 500, 10)
    """
    check_max_history(max_history)
    folder = Path(folder)
    id2name_path = folder / "id2name.json"
    train_path = folder / "train.json"
    for path in (id2name_path, train_path):
        if not path.is_file():
            raise DataFormatError(path, "missing: SPRec needs train.json and id2name.json")
    id2name = load_json(id2name_path)
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
        name2id = load_json(name2id_path)
        if not isinstance(name2id, dict):
            raise DataFormatError(name2id_path, "expected a JSON object {title: id}")
        title_to_id: dict[str, int] = {}
        for title, item in name2id.items():
            try:
                title_to_id[title] = as_int(item, "id")
            except ValueError as err:
                raise DataFormatError(name2id_path, str(err), key=title) from err
            if not 0 <= title_to_id[title] < len(titles):
                raise DataFormatError(name2id_path, f"id outside 0..{len(titles) - 1}", key=title)
    else:
        title_to_id = {}
        for item, title in enumerate(titles):
            title_to_id.setdefault(title, item)

    records = load_json(train_path)
    if not isinstance(records, list):
        raise DataFormatError(train_path, "expected a JSON list of {instruction, input, output} records")
    histories: list[list[int]] = []
    targets: list[int] = []
    dropped = empty = 0
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
        if not history:
            empty += 1
            continue
        histories.append(history)
        targets.append(target)
    if not targets:
        if empty:
            raise DataFormatError(train_path, f"all {empty} records lost their whole history: none of their "
                                  "history titles is in the catalogue (id2name.json / name2id.json); check "
                                  "that the catalogue belongs to this train.json")
        raise DataFormatError(train_path, "no records")
    if empty:
        warnings.warn(f"{train_path}: {empty} of {len(records)} records left out because none of their "
                      "history titles is in the catalogue (info['dropped_records'])", DataWarning,
                      stacklevel=2)
    examples = Examples.from_lists(histories, targets, max_history)
    order = np.random.default_rng(seed).permutation(len(examples))
    train, valid, test = (examples.subset(order[s]) for s in temporal_split(len(order)))
    return Dataset(
        dataset_name(folder, name), Catalogue(len(titles), titles=titles),
        train, valid, test, users=None,
        info={
            "format": "sprec", "source": str(folder), "dropped_history_titles": dropped,
            "dropped_records": empty, "seed": seed,
            "split": f"SPRec train.json only: records shuffled with np.random.default_rng({seed})"
                     ".permutation, then cut 8:1:1 into train/valid/test",
        },
    )


def detect(folder: Path) -> bool:
    """An SPRec folder has ``train.json`` and ``id2name.json``.

    Example:
        >>> detect(Path("../shared/data/goodreads-sprec"))  # doctest: +SKIP
        True
    """
    return (folder / "train.json").is_file() and (folder / "id2name.json").is_file()


FORMAT = FormatSpec(
    name="sprec",
    description="SPRec json: train.json Alpaca prompts + id2name.json catalogue (split 8:1:1 by us)",
    detect=detect,
    read=read_sprec,
    looks_for="train.json + id2name.json",
)
