"""What a raw source declares (:class:`RawSource`, :class:`RawFile`) and the one pipeline they all
share (:func:`prepare_raw`): fetch and verify the files, parse them, apply the D3 protocol
(:func:`recgym.data.protocol.build_dataset`) and cache the result.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recgym.data.cache import cached_dataset
from recgym.data.dataset import DataFormatError, Dataset, DataWarning
from recgym.data.download import data_dir, fetch_raw, sha256_file
from recgym.data.protocol import InteractionLog, build_dataset, cache_path, check_params
from recgym.data.sources.pins import PINS, REQUIRE_PINS_ENV, pin_line

__all__ = ["Parser", "RawFile", "RawSource", "prepare_raw"]

#: ``parse(paths, progress=...)``: the source's files by kind -> interactions + raw title per item key.
Parser = Callable[..., tuple[InteractionLog, dict[str, str]]]


@dataclass(frozen=True)
class RawFile:
    """One raw file of a source subset: where it comes from, its local name and its pin.

    Args:
        key: ``"<source>/<file name>"``, the key of :data:`recgym.data.sources.pins.PINS`.
        name: the file name under the raw folder.
        url: where it is downloaded from.
        size, sha256: the pinned size and SHA-256, None when not pinned.

    Example:
        >>> from recgym.data.sources import RAW_SOURCES
        >>> f = RAW_SOURCES["goodreads"].files("poetry")["books"]
        >>> f.key, f.url.endswith("/byGenre/goodreads_books_poetry.json.gz")
        ('goodreads/goodreads_books_poetry.json.gz', True)
    """

    key: str
    name: str
    url: str
    size: int | None = None
    sha256: str | None = None

    @property
    def pinned(self) -> bool:
        return self.size is not None or self.sha256 is not None

    def fetch(self, folder: Path, *, download: bool, progress: bool = True) -> tuple[Path, dict[str, Any]]:
        """The local copy (downloaded if allowed and missing) and what is known of it.

        A pinned file is verified (see :func:`recgym.data.download.fetch_raw`). A file without a
        pin, or an un-gzipped copy the pin cannot check, is hashed and used with a
        :class:`DataWarning` that prints its size and SHA-256 and how to pin them; with
        ``$RECGYM_REQUIRE_PINS=1`` it is refused instead (:class:`DataFormatError`).

        Example:
            >>> path, check = f.fetch(data_dir() / "raw" / "goodreads", download=True)  # doctest: +SKIP
            >>> check  # doctest: +SKIP
            {'size': 18403246, 'sha256': '…', 'verified': True}
        """
        dest = folder / self.name
        path = fetch_raw(self.url, dest, download=download, progress=progress, size=self.size,
                         sha256=self.sha256)
        if self.pinned and path == dest:
            return path, {"size": path.stat().st_size, "sha256": self.sha256, "verified": True}
        why = ("it is an un-gzipped copy, which the pin of the .gz file cannot check" if self.pinned
               else "no size / sha256 is pinned for it")
        if os.environ.get(REQUIRE_PINS_ENV, "").strip() not in ("", "0"):
            raise DataFormatError(path, f"refusing an unverified raw file ({why}) because "
                                  f"${REQUIRE_PINS_ENV} is set; pin it (python -m recgym.data.sources "
                                  f"{path}) or unset ${REQUIRE_PINS_ENV}")
        size, digest = path.stat().st_size, sha256_file(path)
        warnings.warn(f"{path} is used unverified ({why}): {size} bytes, sha256 {digest}. If this copy is "
                      f"right, pin it by adding `{pin_line(self.key, size, digest).strip()}` to PINS in "
                      "recgym/data/sources/pins.py", DataWarning, stacklevel=3)
        return path, {"size": size, "sha256": digest, "verified": False}


@dataclass(frozen=True)
class RawSource:
    """Everything that differs between raw sources; :func:`prepare_raw` does the rest.

    Args:
        name: short name: raw files go to ``data_dir()/raw/<name>/``, datasets are ``<name>-<subset>``.
        label: the source in messages, e.g. ``"Amazon 2018"``.
        citation: provenance written to ``Dataset.info["source"]``.
        subset_arg: what a subset is called (``"category"``, ``"genre"``), also the keyword of
            :func:`recgym.data.load` that picks one.
        subsets: every subset the source publishes.
        base_url: the upstream folder that ``layout`` is relative to.
        url_env: environment variable naming a mirror of ``base_url`` (same layout).
        layout: file kind -> path under ``base_url`` with ``{subset}``; the local name is its last part.
        parse: ``parse(paths_by_kind, progress=...) -> (InteractionLog, {item key: raw title})``.
        default_subset: the subset when none is given (None: one must be given).
        default_end: the protocol's ``end`` month when none is given (None: last interaction).
        extra_info: more provenance for ``Dataset.info`` (e.g. which rows count as interactions).

    Example:
        >>> from recgym.data.sources import RAW_SOURCES
        >>> RAW_SOURCES["amazon"].urls("Video_Games", "http://127.0.0.1:8000/amz")["reviews"]
        'http://127.0.0.1:8000/amz/categoryFilesSmall/Video_Games_5.json.gz'
    """

    name: str
    label: str
    citation: str
    subset_arg: str
    subsets: tuple[str, ...]
    base_url: str
    url_env: str
    layout: Mapping[str, str]
    parse: Parser
    default_subset: str | None = None
    default_end: str | None = None
    extra_info: Mapping[str, Any] = field(default_factory=dict)

    def check_subset(self, subset: str | None) -> str:
        """``subset`` (or the default) when the source has it; ValueError listing the subsets otherwise."""
        subset = subset if subset is not None else self.default_subset
        if subset not in self.subsets:
            raise ValueError(f"unknown {self.label} {self.subset_arg} {subset!r}; "
                             f"one of {', '.join(self.subsets)}")
        return subset

    def urls(self, subset: str, base_url: str | None = None) -> dict[str, str]:
        """File kind -> URL, under ``base_url`` or ``$<url_env>`` when given (a mirror), else upstream."""
        subset = self.check_subset(subset)
        base = (base_url or os.environ.get(self.url_env) or self.base_url).rstrip("/")
        return {kind: f"{base}/{path.format(subset=subset)}" for kind, path in self.layout.items()}

    def files(self, subset: str, base_url: str | None = None) -> dict[str, RawFile]:
        """File kind -> :class:`RawFile` (URL, local name and pin) for one subset."""
        out = {}
        for kind, url in self.urls(subset, base_url).items():
            name = url.rsplit("/", 1)[-1]
            key = f"{self.name}/{name}"
            pin = PINS.get(key)
            out[kind] = RawFile(key, name, url, None if pin is None else pin.size,
                                None if pin is None else pin.sha256)
        return out


def prepare_raw(
    source: str | RawSource,
    subset: str | None = None,
    *,
    raw_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    download: bool = True,
    max_history: int = 10,
    min_items: int = 10_000,
    start: str | None = None,
    end: str | None = "default",
    k: int = 5,
    max_words: int = 20,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """A raw source subset processed by the D3 protocol (:mod:`recgym.data.protocol`), cached.

    Fetches (and verifies) the subset's files, parses them with the source's parser, applies
    :func:`~recgym.data.protocol.build_dataset` and caches the result as
    ``data_dir()/processed/<source>-<subset>-h<max_history>-<hash of the options>.npz``.
    Parameters are checked before any download.

    Args:
        source: a name of :data:`recgym.data.sources.RAW_SOURCES` (``"amazon"``, ``"goodreads"``)
            or a :class:`RawSource`.
        subset: the category / genre (default: the source's default, if it has one).
        raw_dir: where the raw files are (default ``data_dir()/raw/<source>``). An un-gzipped copy
            (``X.json`` for ``X.json.gz``) is used too.
        base_url: a mirror with the upstream layout (default ``$<url_env>``, else upstream).
        download: download missing raw files; otherwise a missing file is a FileNotFoundError.
        max_history: history window of each example.
        min_items: widen the time window a year at a time until its k-core has this many items.
        start: first month of the window, ``"YYYY-MM"`` (default: 12 months before ``end``).
        end: last month of the window, included whole (UTC); ``"default"``: the source's default
            (Amazon ``"2018-11"``), None: the month of the last usable interaction.
        k: the k-core threshold.
        max_words: titles with more words are dropped.
        cache: read / write the processed ``.npz`` (a damaged one is rebuilt).
        progress: show download and parsing progress.

    Raises:
        ValueError: an unknown source or subset, or bad parameters.
        FileNotFoundError: a raw file is missing and ``download`` is false.
        DownloadError: a download failed or does not match its pin (an ``OSError``).
        DataFormatError: a raw file is malformed, or a local copy does not match its pin.

    Example:
        >>> ds = prepare_raw("amazon", "Toys_and_Games")  # doctest: +SKIP
        >>> ds.name, ds.info["window"]  # doctest: +SKIP
        ('amazon-Toys_and_Games', {...})
    """
    if isinstance(source, RawSource):
        spec = source
    else:
        from recgym.data.sources import get_source

        spec = get_source(source)
    subset = spec.check_subset(subset)
    end = spec.default_end if end == "default" else end
    check_params(max_history, k, start, end)
    files = spec.files(subset, base_url)
    stem = f"{spec.name}-{subset}"
    params = {"source": spec.name, spec.subset_arg: subset, "min_items": min_items, "start": start,
              "end": end, "k": k, "max_words": max_words}

    def build() -> Dataset:
        folder = Path(raw_dir) if raw_dir is not None else data_dir() / "raw" / spec.name
        paths: dict[str, Path] = {}
        checks: dict[str, dict[str, Any]] = {}
        for kind, raw in files.items():
            paths[kind], checks[kind] = raw.fetch(folder, download=download, progress=progress)
        log, titles = spec.parse(paths, progress=progress)
        return build_dataset(
            stem, log, titles, max_history=max_history, min_items=min_items, k=k,
            max_words=max_words, start=start, end=end,
            info={"source": spec.citation, spec.subset_arg: subset,
                  "files": {kind: path.name for kind, path in paths.items()},
                  "urls": {kind: raw.url for kind, raw in files.items()},
                  "file_checks": checks, **spec.extra_info},
        )

    return cached_dataset(cache_path(stem, max_history, params), build, cache=cache)
