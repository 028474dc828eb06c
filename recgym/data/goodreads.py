"""Backward-compatible names for the Goodreads source, which lives in
:mod:`recgym.data.sources.goodreads` (its pipeline is :func:`recgym.data.sources.prepare_raw`).

Example:
    >>> from recgym.data.goodreads import parse_goodreads_date
    >>> parse_goodreads_date("Tue Oct 18 12:55:29 -0700 2016")
    1476820529
"""

from __future__ import annotations

from recgym.data.sources.goodreads import (
    GOODREADS_BASE_URL,
    GOODREADS_GENRES,
    GOODREADS_URLS,
    goodreads_urls,
    parse_goodreads_date,
    prepare_goodreads,
    read_goodreads,
)

__all__ = ["GOODREADS_BASE_URL", "GOODREADS_GENRES", "GOODREADS_URLS", "goodreads_urls",
           "parse_goodreads_date", "prepare_goodreads", "read_goodreads"]
