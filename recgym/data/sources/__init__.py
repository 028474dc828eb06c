"""Raw interaction logs processed by the D3 protocol: one module per source, one shared pipeline.

:data:`RAW_SOURCES` is the one table of raw sources. A source module declares only what differs
(its URLs and file layout, its subsets, how to parse its rows into an
:class:`~recgym.data.protocol.InteractionLog` plus titles) as a
:class:`~recgym.data.sources.base.RawSource`; :func:`prepare_raw` does the fetching, verifying,
protocol and caching for all of them. To add a source, write ``sources/<name>.py`` with a
``SOURCE = RawSource(...)`` and add one line to ``_TABLE`` below. Downloads are verified against
:data:`~recgym.data.sources.pins.PINS` (see :mod:`recgym.data.sources.pins` for how to pin).

* ``amazon``: Amazon Reviews 2018 5-core + metadata (:mod:`recgym.data.sources.amazon`).
* ``goodreads``: UCSD Book Graph genre subsets (:mod:`recgym.data.sources.goodreads`).
"""

from __future__ import annotations

from recgym.data.sources import amazon, goodreads
from recgym.data.sources.base import RawFile, RawSource, prepare_raw
from recgym.data.sources.pins import PINS, Pin, pin

__all__ = ["PINS", "RAW_SOURCES", "Pin", "RawFile", "RawSource", "get_source", "pin", "prepare_raw",
           "source_names"]

_TABLE: tuple[RawSource, ...] = (
    amazon.SOURCE,
    goodreads.SOURCE,
)

#: source name -> :class:`RawSource`.
RAW_SOURCES: dict[str, RawSource] = {source.name: source for source in _TABLE}


def source_names() -> list[str]:
    """The names of all raw sources, sorted.

    Example:
        >>> source_names()
        ['amazon', 'goodreads']
    """
    return sorted(RAW_SOURCES)


def get_source(name: str | RawSource) -> RawSource:
    """The :class:`RawSource` called ``name`` (a RawSource is returned as is); ValueError when unknown.

    Example:
        >>> get_source("goodreads").subset_arg
        'genre'
        >>> get_source("movielens")
        Traceback (most recent call last):
        ValueError: unknown raw source 'movielens'; known sources: amazon, goodreads
    """
    if isinstance(name, RawSource):
        return name
    if name not in RAW_SOURCES:
        raise ValueError(f"unknown raw source {name!r}; known sources: {', '.join(source_names())}")
    return RAW_SOURCES[name]
