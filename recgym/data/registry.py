"""One entry point for every dataset: a name (``synthetic``, ``games``, ...) or a local folder.

Names resolve in this order:

* ``synthetic``: generated in memory (seeded, about 0.1 s).
* raw pipelines (``games``, ``toys``, ``goodreads``): Amazon Reviews 2018 / UCSD Book Graph files
  processed by the D3 protocol; raw files and the processed ``.npz`` live in :func:`data_dir`.
  Downloading happens only with ``download=True`` (or ``recgym data download NAME``).
* prepared folders (``games-lcrec``, ``office-d3``, ``industrial-d3``, ``goodreads-sprec``):
  a folder of that name under :func:`data_dir` or under any folder in ``$RECGYM_DATA_PATH``
  (``os.pathsep``-separated; e.g. the project's ``shared/data``).
* anything else is taken as a path to a folder in a supported format (detected or named).

Folders are read once and cached as ``.npz`` under ``data_dir()/processed``, keyed by the
folder's path, its files' sizes and modification times, and the reader options.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from recgym.data.dataset import DataFormatError, Dataset

READER_VERSION = 1

# name -> (folder name, format, description)
PREPARED_FOLDERS: dict[str, tuple[str, str, str]] = {
    "games-lcrec": ("games-lcrec", "lcrec", "Amazon 2018 Video Games, LC-Rec format with 4-level SIDs"),
    "office-d3": ("office-d3", "d3", "Amazon 2018 Office Products, D3 csv (valid + test)"),
    "industrial-d3": ("industrial-d3", "d3", "Amazon 2018 Industrial & Scientific, D3 csv (valid + test)"),
    "goodreads-sprec": ("goodreads-sprec", "sprec", "Goodreads, SPRec json (train, split 8:1:1)"),
}

RAW_PIPELINES: dict[str, tuple[str, str]] = {
    "games": ("amazon", "Video_Games"),
    "toys": ("amazon", "Toys_and_Games"),
    "goodreads": ("goodreads", "poetry"),
}


def data_dir() -> Path:
    """Where raw downloads and processed datasets are cached (``$RECGYM_DATA_DIR`` or per user)."""
    from recgym.data.download import data_dir as _data_dir

    return _data_dir()


def search_path() -> list[Path]:
    """Folders searched for prepared dataset folders: ``data_dir()`` then ``$RECGYM_DATA_PATH``."""
    extra = [Path(p) for p in os.environ.get("RECGYM_DATA_PATH", "").split(os.pathsep) if p]
    return [data_dir(), *extra]


def available() -> dict[str, str]:
    """Every dataset name with a one-line description and where it would come from.

    Example:
        >>> "synthetic" in available()
        True
    """
    out = {"synthetic": "offline synthetic dataset (generated, seeded)"}
    for name, (source, category) in RAW_PIPELINES.items():
        out[name] = (f"{source} raw pipeline ({category}), D3 protocol; "
                     f"download with `recgym data download {name}`")
    for name, (_, _, text) in PREPARED_FOLDERS.items():
        out[name] = f"{text}; a folder named {name!r} in RECGYM_DATA_DIR or RECGYM_DATA_PATH"
    return out


def find_folder(name: str) -> Path | None:
    """The first folder called ``name`` on :func:`search_path`, or None."""
    for root in search_path():
        candidate = root / name
        if candidate.is_dir():
            return candidate
    return None


def load(
    name_or_path: str | os.PathLike[str],
    *,
    format: str | None = None,
    max_history: int = 10,
    download: bool = False,
    cache: bool = True,
    progress: bool = True,
    **kwargs: Any,
) -> Dataset:
    """Load a dataset by name or from a local folder.

    Args:
        name_or_path: a name from :func:`available` or a folder path.
        format: for folders, ``"d3"``, ``"lcrec"`` or ``"sprec"``; detected when None.
        max_history: history window of each example.
        download: allow raw pipelines to download missing raw files.
        cache: read / write the processed ``.npz`` cache.
        progress: show progress bars.
        **kwargs: passed to the generator, pipeline or reader (e.g. ``seed``, ``num_items``).

    Example:
        >>> ds = load("synthetic", num_items=300, num_users=200)
        >>> ds.name, ds.catalogue.num_items
        ('synthetic', 300)
    """
    key = os.fspath(name_or_path)
    if key == "synthetic":
        from recgym.data.synthetic import make_synthetic

        return make_synthetic(max_history=max_history, **kwargs)
    if key in RAW_PIPELINES:
        source, category = RAW_PIPELINES[key]
        if source == "amazon":
            from recgym.data.amazon import prepare_amazon

            return prepare_amazon(category, download=download, max_history=max_history,
                                  progress=progress, **kwargs)
        from recgym.data.goodreads import prepare_goodreads

        kwargs.setdefault("genre", category)
        return prepare_goodreads(download=download, max_history=max_history, progress=progress, **kwargs)
    if key in PREPARED_FOLDERS:
        folder_name, fmt, _ = PREPARED_FOLDERS[key]
        folder = find_folder(folder_name)
        if folder is None:
            roots = ", ".join(str(p) for p in search_path())
            raise FileNotFoundError(
                f"dataset {key!r} not found: put the folder {folder_name!r} in one of [{roots}] "
                f"(set RECGYM_DATA_PATH to the folder that holds it), or pass its path to load()"
            )
        return _load_folder(folder, format or fmt, max_history, cache, name=key, **kwargs)
    path = Path(key)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{key!r} is neither a dataset name ({', '.join(available())}) nor a folder"
        )
    return _load_folder(path, format, max_history, cache, **kwargs)


def _load_folder(
    folder: Path, fmt: str | None, max_history: int, cache: bool, **kwargs: Any
) -> Dataset:
    from recgym.data.readers import detect_format, read_folder

    fmt = fmt or detect_format(folder)
    if not cache:
        return read_folder(folder, format=fmt, max_history=max_history, **kwargs)
    key = _folder_key(folder, fmt, max_history, kwargs)
    target = data_dir() / "processed" / f"{folder.name}-{fmt}-{key}.npz"
    if target.exists():
        try:
            return Dataset.load(target)
        except DataFormatError:
            target.unlink(missing_ok=True)  # stale or damaged cache: rebuild it
    dataset = read_folder(folder, format=fmt, max_history=max_history, **kwargs)
    dataset.save(target)
    return dataset


def _folder_key(folder: Path, fmt: str, max_history: int, kwargs: dict[str, Any]) -> str:
    files = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*") if p.is_file()
    )
    blob = json.dumps([READER_VERSION, str(folder.resolve()), fmt, max_history, kwargs, files],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

