"""UCSD Book Graph / Goodreads (Wan & McAuley, RecSys 2018) -> :class:`Dataset` by the D3 protocol.

Source: https://mengtingwan.github.io/data/goodreads (research use only; cite the papers). Two
files per genre subset: ``goodreads_interactions_<genre>.json.gz`` (one JSON object per line with
``user_id``, ``book_id``, ``is_read``, ``rating``, ``date_added``, ``read_at``, ...) and
``goodreads_books_<genre>.json.gz`` (one JSON object per line with ``book_id``, ``title``, ...).

Which interactions count: a shelf entry is kept when the book was read (``is_read`` true) or
rated (``rating > 0``); books only shelved (e.g. "to-read") are not consumption and are left out.
Its time is ``date_added`` (always present; ``read_at`` is often empty), e.g.
``"Tue Oct 18 12:55:29 -0700 2016"``. Entries with an empty ``date_added`` are skipped and counted
in ``info["counts"]["skipped"]``.

Raw files are kept in ``data_dir()/raw/goodreads/``; the processed dataset is cached as
``data_dir()/processed/goodreads-<genre>-h<max_history>-<params hash>.npz``.
"""

from __future__ import annotations

import calendar
import os
from pathlib import Path

from recgym.data.dataset import DataFormatError, Dataset
from recgym.data.download import data_dir
from recgym.data.protocol import (
    InteractionLog,
    build_dataset,
    cache_path,
    cached_dataset,
    check_params,
    fetch_raw,
    read_json_lines,
    required,
)

__all__ = ["GOODREADS_BASE_URL", "GOODREADS_GENRES", "GOODREADS_URLS", "goodreads_urls",
           "parse_goodreads_date", "prepare_goodreads", "read_goodreads"]

GOODREADS_BASE_URL = "https://mcauleylab.ucsd.edu/public_datasets/gdrive/goodreads/byGenre"

#: The genre subsets; "poetry" is the smallest (about 2.7M shelf entries, 36k books).
GOODREADS_GENRES = (
    "children", "comics_graphic", "fantasy_paranormal", "history_biography",
    "mystery_thriller_crime", "poetry", "romance", "young_adult",
)

#: genre -> {"interactions": URL, "books": URL}
GOODREADS_URLS: dict[str, dict[str, str]] = {
    genre: {
        "interactions": f"{GOODREADS_BASE_URL}/goodreads_interactions_{genre}.json.gz",
        "books": f"{GOODREADS_BASE_URL}/goodreads_books_{genre}.json.gz",
    }
    for genre in GOODREADS_GENRES
}

_MONTHS = {name: i for i, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def goodreads_urls(genre: str, base_url: str | None = None) -> dict[str, str]:
    """The two URLs of a genre subset, under ``base_url`` or ``$RECGYM_GOODREADS_URL`` when given
    (a mirror of the ``byGenre/`` folder).

    Example:
        >>> goodreads_urls("poetry", "http://127.0.0.1:8000/gr")["books"]
        'http://127.0.0.1:8000/gr/goodreads_books_poetry.json.gz'
    """
    if genre not in GOODREADS_URLS:
        raise ValueError(f"unknown Goodreads genre {genre!r}; one of {', '.join(GOODREADS_GENRES)}")
    base = base_url or os.environ.get("RECGYM_GOODREADS_URL")
    urls = GOODREADS_URLS[genre]
    if not base:
        return dict(urls)
    return {kind: base.rstrip("/") + url[len(GOODREADS_BASE_URL):] for kind, url in urls.items()}


def parse_goodreads_date(text: str) -> int:
    """Unix seconds of a Goodreads date such as ``"Tue Oct 18 12:55:29 -0700 2016"``.

    Several times faster than ``datetime.strptime``, which matters for tens of millions of lines.

    Example:
        >>> parse_goodreads_date("Tue Oct 18 12:55:29 -0700 2016")
        1476820529
    """
    try:
        _, month, day, clock, zone, year = text.split()
        hour, minute, second = clock.split(":")
        offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
        if zone[0] not in "+-" or len(zone) != 5:
            raise ValueError(zone)
        stamp = calendar.timegm((int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second)))
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"not a Goodreads date: {text!r}") from None
    return stamp - offset if zone[0] == "+" else stamp + offset


def read_goodreads(
    interactions_path: str | os.PathLike[str], books_path: str | os.PathLike[str], *, progress: bool = True
) -> tuple[InteractionLog, dict[str, str]]:
    """Parse an interactions file and a books file (gzipped or not).

    Returns the read-or-rated shelf entries as an :class:`InteractionLog` (``user_id``,
    ``book_id``, ``date_added``) and the raw title of every such book that has one (the first
    line wins for a repeated ``book_id``).

    Raises:
        DataFormatError: a line that is not a JSON object, a missing / mistyped required key or
            an unparseable date (naming the file, line and key).

    Example:
        >>> log, titles = read_goodreads("goodreads_interactions_poetry.json.gz",
        ...                              "goodreads_books_poetry.json.gz")  # doctest: +SKIP
    """
    log = InteractionLog()
    path = interactions_path
    for line, row in read_json_lines(path, progress=progress):
        user = required(row, "user_id", path, line, kind=(str, int))
        book = required(row, "book_id", path, line, kind=(str, int))
        is_read = required(row, "is_read", path, line, kind=bool)
        rating = required(row, "rating", path, line, kind=(int, float))
        if not (is_read or rating > 0):
            log.skip("not_read_or_rated")
            continue
        added = required(row, "date_added", path, line)
        if not added.strip():
            log.skip("no_date_added")
            continue
        try:
            stamp = parse_goodreads_date(added)
        except ValueError as err:
            raise DataFormatError(path, str(err), line=line, key="date_added") from None
        log.add(str(user), str(book), stamp)
    titles: dict[str, str] = {}
    wanted = log.item_ids
    for line, book in read_json_lines(books_path, progress=progress):
        book_id = str(required(book, "book_id", books_path, line, kind=(str, int)))
        title = book.get("title")
        if book_id in wanted and book_id not in titles and isinstance(title, str):
            titles[book_id] = title
    return log, titles


def prepare_goodreads(
    genre: str = "poetry",
    *,
    raw_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    download: bool = True,
    max_history: int = 10,
    min_items: int = 10_000,
    start: str | None = None,
    end: str | None = None,
    k: int = 5,
    max_words: int = 20,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """A Goodreads genre subset processed by the D3 protocol (cached), like :func:`prepare_amazon`.

    Items are re-indexed 0..N-1 by ``book_id`` sorted as strings (``catalogue.keys``); titles are
    the cleaned ``title`` field (with the series, e.g. ``"Glitterland (Glitterland, #1)"``);
    users are ``user_id`` by first appearance.

    Args:
        genre: one of :data:`GOODREADS_GENRES`.
        raw_dir: where the raw files are (default ``data_dir()/raw/goodreads``).
        base_url: a mirror of the ``byGenre/`` folder (default ``$RECGYM_GOODREADS_URL``, else upstream).
        download: download missing raw files; otherwise a missing file is a FileNotFoundError.
        max_history: history window of each example.
        min_items: widen the time window a year at a time until its 5-core has this many items.
        start: first month of the window, ``"YYYY-MM"`` (default: 12 months before ``end``).
        end: last month of the window, included whole (UTC); default: the month of the last
            read-or-rated entry with a titled book.
        k: the k-core threshold.
        max_words: titles with more words are dropped.
        cache: read / write ``data_dir()/processed/goodreads-<genre>-h<max_history>-<hash>.npz``.
        progress: show download and parsing progress.

    Example:
        >>> ds = prepare_goodreads("poetry")  # doctest: +SKIP
        >>> ds.info["window"], ds.describe()  # doctest: +SKIP
    """
    check_params(max_history, k, start, end)
    urls = goodreads_urls(genre, base_url)
    params = {"source": "goodreads", "genre": genre, "min_items": min_items, "start": start,
              "end": end, "k": k, "max_words": max_words}

    def build() -> Dataset:
        folder = Path(raw_dir) if raw_dir is not None else data_dir() / "raw" / "goodreads"
        interactions = fetch_raw(urls["interactions"], folder / f"goodreads_interactions_{genre}.json.gz",
                                 download=download, progress=progress)
        books = fetch_raw(urls["books"], folder / f"goodreads_books_{genre}.json.gz",
                          download=download, progress=progress)
        log, titles = read_goodreads(interactions, books, progress=progress)
        return build_dataset(
            f"goodreads-{genre}", log, titles, max_history=max_history, min_items=min_items, k=k,
            max_words=max_words, start=start, end=end,
            info={"source": "UCSD Book Graph / Goodreads (Wan & McAuley, RecSys 2018), genre subset",
                  "genre": genre, "files": {"interactions": interactions.name, "books": books.name},
                  "urls": urls, "interaction_rule": "is_read or rating > 0; time = date_added"},
        )

    return cached_dataset(cache_path(f"goodreads-{genre}", max_history, params), build, cache=cache)
