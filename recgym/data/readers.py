"""Backward-compatible names for the format readers, which live in :mod:`recgym.data.formats`
(one module per format and the :data:`~recgym.data.formats.FORMATS` table).

Example:
    >>> from recgym.data.readers import FORMATS, detect_format, read_folder
    >>> sorted(FORMATS)
    ['d3', 'lcrec', 'sprec']
"""

from __future__ import annotations

from recgym.data.formats import (
    D3_COLUMNS,
    FORMATS,
    FormatSpec,
    detect_format,
    format_names,
    read_d3,
    read_folder,
    read_lcrec,
    read_sprec,
)

__all__ = ["D3_COLUMNS", "FORMATS", "FormatSpec", "detect_format", "format_names", "read_d3", "read_folder",
           "read_lcrec", "read_sprec"]
