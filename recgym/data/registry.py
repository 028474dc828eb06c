"""One entry point for every dataset: a name (``synthetic``, ``games``, ...) or a local folder.

Names resolve in this order:

* ``synthetic``: generated in memory (seeded, about 0.1 s).
* raw pipelines (``games``, ``toys``, ``goodreads``): Amazon Reviews 2018 / UCSD Book Graph files
  processed by the D3 protocol (:func:`recgym.data.sources.prepare_raw`, through the
  :data:`~recgym.data.sources.RAW_SOURCES` table); raw files and the processed ``.npz`` live in
  :func:`data_dir`. Downloading happens only with ``download=True`` (or ``recgym data download NAME``).
* prepared folders (``games-lcrec``, ``office-d3``, ``industrial-d3``, ``goodreads-sprec``):
  a folder of that name under :func:`data_dir` or under any folder in ``$RECGYM_DATA_PATH``
  (``os.pathsep``-separated; e.g. the project's ``shared/data``). ``recgym data download NAME``
  (or ``download=True``) fetches it into :func:`data_dir` from its public repository at a pinned
  commit, verified by size and SHA-256 (:mod:`recgym.data.prepared`).
* anything else is taken as a path to a folder in a supported format (detected or named, through
  the :data:`~recgym.data.formats.FORMATS` table).

Folders are read once and cached as ``.npz`` under ``data_dir()/processed``, keyed by the
folder's path, its files' sizes and modification times, and the reader options; a damaged cache
file is rebuilt (:func:`recgym.data.cache.cached_dataset`).

Loader options that the generator, pipeline or reader does not take are a ValueError naming them
and the known ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from recgym.data.checks import check_keywords
from recgym.data.dataset import Dataset

# 2: duplicate JSON keys / ASINs are errors, SPRec drops records without any known history title,
# LC-Rec folders without item2id are read: caches written by version 1 are not reused.
READER_VERSION = 2

# name -> (folder name, format, description)
PREPARED_FOLDERS: dict[str, tuple[str, str, str]] = {
    "games-lcrec": ("games-lcrec", "lcrec", "Amazon 2018 Video Games, LC-Rec format with 4-level SIDs"),
    "office-d3": ("office-d3", "d3", "Amazon 2018 Office Products, D3 csv (valid + test)"),
    "industrial-d3": ("industrial-d3", "d3", "Amazon 2018 Industrial & Scientific, D3 csv (valid + test)"),
    "goodreads-sprec": ("goodreads-sprec", "sprec", "Goodreads, SPRec json (train, split 8:1:1)"),
}

# name -> (raw source in recgym.data.sources.RAW_SOURCES, subset)
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
        out[name] = (f"{text}; download with `recgym data download {name}` (pinned public files), "
                     f"or a folder named {name!r} in RECGYM_DATA_DIR or RECGYM_DATA_PATH")
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
        format: for folders, a name of :data:`recgym.data.formats.FORMATS` (``"d3"``, ``"lcrec"``,
            ``"sprec"``); detected when None.
        max_history: history window of each example.
        download: allow raw pipelines to download missing raw files, and fetch a missing prepared
            folder (:func:`recgym.data.prepared.download_prepared`, verified against its pins).
        cache: read / write the processed ``.npz`` cache.
        progress: show progress bars.
        **kwargs: passed to the generator, pipeline or reader (e.g. ``seed``, ``num_items``);
            an unknown one is a ValueError listing the known ones.

    Raises:
        FileNotFoundError: an unknown name, a prepared folder that is not on the search path, or
            (raw pipelines without ``download``) a missing raw file.
        ValueError: unknown options, an unknown format or raw source, bad parameters;
            :class:`~recgym.data.dataset.DataFormatError` (a ValueError) for malformed input files.
        DownloadError: a download failed or does not match its pin (an ``OSError``).

    Example:
        >>> ds = load("synthetic", num_items=300, num_users=200)
        >>> ds.name, ds.catalogue.num_items
        ('synthetic', 300)
    """
    key = os.fspath(name_or_path)
    if key == "synthetic":
        from recgym.data.synthetic import make_synthetic

        check_keywords(make_synthetic, kwargs, "dataset 'synthetic'", exclude=("max_history",))
        return make_synthetic(max_history=max_history, **kwargs)
    if key in RAW_PIPELINES:
        return _load_raw(key, max_history=max_history, download=download, cache=cache, progress=progress,
                         **kwargs)
    if key in PREPARED_FOLDERS:
        folder_name, fmt, _ = PREPARED_FOLDERS[key]
        folder = find_folder(folder_name)
        if folder is None and download:
            from recgym.data.prepared import download_prepared

            folder = download_prepared(folder_name, progress=progress)
        if folder is None:
            roots = ", ".join(str(p) for p in search_path())
            raise FileNotFoundError(
                f"dataset {key!r} not found: run `recgym data download {key}` (or load(..., download=True)) "
                f"to fetch it from its public repository into {data_dir()}, put the folder {folder_name!r} "
                f"in one of [{roots}] (set RECGYM_DATA_PATH to the folder that holds it), or pass its "
                f"path to load()"
            )
        kwargs.setdefault("name", key)
        return _load_folder(folder, format or fmt, max_history, cache, **kwargs)
    path = Path(key)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{key!r} is neither a dataset name ({', '.join(available())}) nor a folder"
        )
    return _load_folder(path, format, max_history, cache, **kwargs)


def _load_raw(name: str, *, max_history: int, download: bool, cache: bool, progress: bool,
              **kwargs: Any) -> Dataset:
    """A raw pipeline dataset through the :data:`~recgym.data.sources.RAW_SOURCES` table."""
    from recgym.data.sources import get_source, prepare_raw

    source_name, default_subset = RAW_PIPELINES[name]
    source = get_source(source_name)
    check_keywords(prepare_raw, kwargs, f"dataset {name!r} ({source.name} raw pipeline)",
                   exclude=("source", "subset", "download", "max_history", "cache", "progress"),
                   extra=(source.subset_arg,))
    subset = kwargs.pop(source.subset_arg, default_subset)
    return prepare_raw(source, subset, download=download, max_history=max_history, cache=cache,
                       progress=progress, **kwargs)


def _load_folder(
    folder: Path, fmt: str | None, max_history: int, cache: bool, **kwargs: Any
) -> Dataset:
    from recgym.data.cache import cached_dataset
    from recgym.data.formats import FORMATS, detect_format, format_names, read_folder

    fmt = fmt or detect_format(folder)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {format_names()}, got {fmt!r}")
    check_keywords(FORMATS[fmt].read, kwargs, f"the {fmt} reader of {folder}",
                   exclude=("folder", "max_history"))

    def build() -> Dataset:
        return read_folder(folder, format=fmt, max_history=max_history, **kwargs)

    if not cache:
        return build()
    key = _folder_key(folder, fmt, max_history, kwargs)
    return cached_dataset(data_dir() / "processed" / f"{folder.name}-{fmt}-{key}.npz", build)


def _folder_key(folder: Path, fmt: str, max_history: int, kwargs: dict[str, Any]) -> str:
    files = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*") if p.is_file()
    )
    blob = json.dumps([READER_VERSION, str(folder.resolve()), fmt, max_history, kwargs, files],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

