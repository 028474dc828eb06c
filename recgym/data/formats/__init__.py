"""Published recommendation data formats, one module each, all read into a :class:`Dataset`.

:data:`FORMATS` is the one table of formats; :func:`detect_format` and :func:`read_folder` only
go through it. To add a format, write ``formats/<name>.py`` exposing ``detect(folder) -> bool``,
``read_<name>(folder, *, max_history=10, name=None, ...) -> Dataset`` and
``FORMAT = FormatSpec(...)`` (helpers in :mod:`recgym.data.formats.common`), then add one line to
``_TABLE`` below. Its place in ``_TABLE`` is its detection priority.

* ``lcrec``: :func:`~recgym.data.formats.lcrec.read_lcrec`, LC-Rec ``*.inter.json`` + ``*.index.json``.
* ``sprec``: :func:`~recgym.data.formats.sprec.read_sprec`, SPRec ``train.json`` + ``id2name.json``.
* ``d3``: :func:`~recgym.data.formats.d3.read_d3`, D3 / BIGRec / ReRe CSV + ``title<TAB>id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recgym.data.checks import check_keywords
from recgym.data.dataset import DataFormatError, Dataset
from recgym.data.formats import d3, lcrec, sprec
from recgym.data.formats.common import FormatSpec, PathLike
from recgym.data.formats.d3 import D3_COLUMNS, read_d3
from recgym.data.formats.lcrec import read_lcrec
from recgym.data.formats.sprec import read_sprec

__all__ = ["D3_COLUMNS", "FORMATS", "FormatSpec", "detect_format", "format_names", "read_d3", "read_folder",
           "read_lcrec", "read_sprec"]

# Detection order: the first format whose detect() is true wins (an LC-Rec folder may also hold
# a stray test.csv; an SPRec folder is recognised by two exact file names).
_TABLE: tuple[FormatSpec, ...] = (
    lcrec.FORMAT,
    sprec.FORMAT,
    d3.FORMAT,
)

#: format name -> :class:`FormatSpec`, in detection order. ``FORMATS[name](folder, **kw)`` reads.
FORMATS: dict[str, FormatSpec] = {spec.name: spec for spec in _TABLE}


def format_names() -> list[str]:
    """The names of all formats, sorted (e.g. for a command line's ``--format`` choices).

    Example:
        >>> format_names()
        ['d3', 'lcrec', 'sprec']
    """
    return sorted(FORMATS)


def detect_format(folder: PathLike) -> str:
    """The format of a data folder: the first entry of :data:`FORMATS` whose ``detect`` accepts it.

    LC-Rec has a ``*.inter.json``; SPRec has ``train.json`` and ``id2name.json``; D3 has
    ``test/*.csv``, ``test.csv`` or ``info/*.txt``.

    Example:
        >>> detect_format("../shared/data/office-d3")  # doctest: +SKIP
        'd3'
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "not a folder")
    for name, spec in FORMATS.items():
        if spec.detect(folder):
            return name
    looked = ", ".join(f"{spec.looks_for} ({name})" for name, spec in FORMATS.items())
    raise DataFormatError(folder, f"unknown data format: looked for {looked}")


def read_folder(folder: PathLike, format: str | None = None, **kw: Any) -> Dataset:
    """Read a data folder with the reader for ``format`` (detected when None).

    Keyword arguments go to the reader (``max_history``, ``name``, ``seed`` for SPRec); an
    unknown one is a ValueError that lists the reader's options.

    Example:
        >>> ds = read_folder("../shared/data/goodreads-sprec", max_history=5)  # doctest: +SKIP
        >>> ds.info["format"], ds.max_history  # doctest: +SKIP
        ('sprec', 5)
    """
    fmt = detect_format(folder) if format is None else format
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {format_names()}, got {fmt!r}")
    spec = FORMATS[fmt]
    check_keywords(spec.read, kw, f"the {fmt} reader", exclude=("folder",))
    return spec.read(folder, **kw)
