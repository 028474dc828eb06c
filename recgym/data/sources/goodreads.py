"""UCSD Book Graph / Goodreads (Wan & McAuley, RecSys 2018): what differs from other raw sources.

Source: https://mengtingwan.github.io/data/goodreads (research use only; cite the papers). Two
files per genre subset: ``goodreads_interactions_<genre>.json.gz`` (one JSON object per line with
``user_id``, ``book_id``, ``is_read``, ``rating``, ``date_added``, ``read_at``, ...) and
``goodreads_books_<genre>.json.gz`` (one JSON object per line with ``book_id``, ``title``, ...).

Which interactions count: a shelf entry is kept when the book was read (``is_read`` true) or
rated (``rating > 0``); books only shelved (e.g. "to-read") are not consumption and are left out.
Its time is ``date_added`` (always present; ``read_at`` is often empty), e.g.
``"Tue Oct 18 12:55:29 -0700 2016"``. Entries with an empty ``date_added`` are skipped and counted
in ``info["counts"]["skipped"]``.

Raw files are kept in ``data_dir()/raw/goodreads/``; :func:`~recgym.data.sources.prepare_raw`
caches the processed dataset as ``data_dir()/processed/goodreads-<genre>-h<max_history>-<hash>.npz``.
"""

from __future__ import annotations

import calendar
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recgym.data.dataset import DataFormatError, Dataset
from recgym.data.protocol import InteractionLog, read_json_lines, required
from recgym.data.sources.base import RawSource, prepare_raw

__all__ = ["GOODREADS_BASE_URL", "GOODREADS_GENRES", "GOODREADS_URLS", "SOURCE", "goodreads_urls",
           "parse_goodreads_date", "prepare_goodreads", "read_goodreads"]

GOODREADS_BASE_URL = "https://mcauleylab.ucsd.edu/public_datasets/gdrive/goodreads/byGenre"

#: The genre subsets; "poetry" is the smallest (about 2.7M shelf entries, 36k books).
GOODREADS_GENRES = (
    "children", "comics_graphic", "fantasy_paranormal", "history_biography",
    "mystery_thriller_crime", "poetry", "romance", "young_adult",
)

_LAYOUT = {"interactions": "goodreads_interactions_{subset}.json.gz",
           "books": "goodreads_books_{subset}.json.gz"}

#: genre -> {"interactions": URL, "books": URL}
GOODREADS_URLS: dict[str, dict[str, str]] = {
    genre: {kind: f"{GOODREADS_BASE_URL}/{path.format(subset=genre)}" for kind, path in _LAYOUT.items()}
    for genre in GOODREADS_GENRES
}

_MONTHS = {name: i for i, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


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


def _parse(paths: Mapping[str, Path], *, progress: bool = True) -> tuple[InteractionLog, dict[str, str]]:
    return read_goodreads(paths["interactions"], paths["books"], progress=progress)


SOURCE = RawSource(
    name="goodreads",
    label="Goodreads",
    citation="UCSD Book Graph / Goodreads (Wan & McAuley, RecSys 2018), genre subset",
    subset_arg="genre",
    subsets=GOODREADS_GENRES,
    base_url=GOODREADS_BASE_URL,
    url_env="RECGYM_GOODREADS_URL",
    layout=_LAYOUT,
    parse=_parse,
    default_subset="poetry",
    default_end=None,  # the month of the last read-or-rated entry with a titled book
    extra_info={"interaction_rule": "is_read or rating > 0; time = date_added"},
)


def goodreads_urls(genre: str, base_url: str | None = None) -> dict[str, str]:
    """The two URLs of a genre subset, under ``base_url`` or ``$RECGYM_GOODREADS_URL`` when given
    (a mirror of the ``byGenre/`` folder).

    Example:
        >>> goodreads_urls("poetry", "http://127.0.0.1:8000/gr")["books"]
        'http://127.0.0.1:8000/gr/goodreads_books_poetry.json.gz'
    """
    return SOURCE.urls(genre, base_url)


def prepare_goodreads(genre: str = "poetry", **kwargs: Any) -> Dataset:
    """A Goodreads genre subset processed by the D3 protocol (cached):
    ``prepare_raw("goodreads", genre, **kwargs)``, see :func:`~recgym.data.sources.prepare_raw`
    for the options (``end`` defaults to the month of the last usable entry).

    Items are re-indexed 0..N-1 by ``book_id`` sorted as strings (``catalogue.keys``); titles are
    the cleaned ``title`` field (with the series, e.g. ``"Glitterland (Glitterland, #1)"``);
    users are ``user_id`` by first appearance.

    Example:
        >>> ds = prepare_goodreads("poetry")  # doctest: +SKIP
        >>> ds.info["window"], ds.describe()  # doctest: +SKIP
    """
    return prepare_raw(SOURCE, genre, **kwargs)
