"""Pinned size and SHA-256 of the raw source files: the one table downloads are verified against.

:data:`PINS` maps ``"<source>/<file name>"`` (e.g. ``"amazon/Video_Games_5.json.gz"``) to a
:class:`Pin`. A pinned file is checked after every download and before a local copy is used; a
mismatch is an error naming the URL or file with the expected and actual values. A file without
a pin is used with a :class:`~recgym.data.dataset.DataWarning` that prints its size and SHA-256
(and is refused when ``$RECGYM_REQUIRE_PINS=1``); its values are also recorded in
``Dataset.info["file_checks"]``.

The table is empty: recgym is developed without network access, so no upstream file could be
downloaded and hashed here, and an unverified value would only make every correct download
fail. To pin files (maintainers, or users for their own installation):

1. download them once: ``recgym data download games`` (the files land in
   ``data_dir()/raw/<source>/``; the warning prints each file's values);
2. run ``python -m recgym.data.sources ~/.cache/recgym/raw/amazon/*.json.gz`` (any
   ``raw/<source>/<file>`` paths; ``--source NAME`` when the folder is named otherwise), which
   prints one ``"<source>/<file>": Pin(size=..., sha256="..."),`` line per file;
3. check the values against a second download or a published checksum, and paste the lines into
   :data:`PINS` below.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

from recgym.data.download import sha256_file

__all__ = ["PINS", "REQUIRE_PINS_ENV", "Pin", "main", "pin", "pin_line"]

#: Set to 1 to refuse raw files that have no pin (instead of warning).
REQUIRE_PINS_ENV = "RECGYM_REQUIRE_PINS"


class Pin(NamedTuple):
    """The expected size (bytes) and SHA-256 (hex) of one raw file.

    Example:
        >>> Pin(size=3, sha256="ba78...").size
        3
    """

    size: int
    sha256: str


#: "<source>/<file name>" -> Pin. See the module docstring for how to fill it.
PINS: dict[str, Pin] = {
}


def pin(path: str | os.PathLike[str]) -> Pin:
    """The :class:`Pin` of a local file (its size and SHA-256).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as fh:
        ...     _ = fh.write(b"abc")
        >>> pin(fh.name)
        Pin(size=3, sha256='ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
        >>> os.unlink(fh.name)
    """
    return Pin(Path(path).stat().st_size, sha256_file(path))


def pin_line(key: str, size: int, sha256: str) -> str:
    """One line to paste into :data:`PINS`.

    Example:
        >>> pin_line("amazon/x.json.gz", 3, "ab")
        '    "amazon/x.json.gz": Pin(size=3, sha256="ab"),'
    """
    return f'    "{key}": Pin(size={size}, sha256="{sha256}"),'


def main(argv: list[str] | None = None) -> int:
    """``python -m recgym.data.sources FILE...``: print a :data:`PINS` line per file.

    The source is the name of each file's folder (``raw/amazon/X.json.gz`` -> ``amazon``) unless
    ``--source`` names it.

    Example:
        >>> main(["--source", "amazon", __file__])  # doctest: +ELLIPSIS
            "amazon/pins.py": Pin(size=..., sha256="..."),
        0
    """
    parser = argparse.ArgumentParser(prog="python -m recgym.data.sources",
                                     description="print the PINS lines (size and sha256) of raw files")
    parser.add_argument("files", nargs="+", type=Path, help="downloaded raw files")
    parser.add_argument("--source", help="the source name (default: each file's folder name)")
    args = parser.parse_args(argv)
    for path in args.files:
        if not path.is_file():
            print(f"{path}: not a file", file=sys.stderr)
            return 2
        size, digest = pin(path)
        print(pin_line(f"{args.source or path.resolve().parent.name}/{path.name}", size, digest))
    return 0
