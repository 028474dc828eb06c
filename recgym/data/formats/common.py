"""What every format reader shares: the :class:`FormatSpec` record of the format table, and the
careful file helpers (size guard, UTF-8, JSON without silent data loss, ``value<TAB>index`` maps).

Every problem raises :class:`~recgym.data.dataset.DataFormatError` naming the file and, where
known, the line (1-based) or the JSON key.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recgym.data.checks import check_file_size, keyword_names
from recgym.data.dataset import DataFormatError, Dataset

__all__ = ["FormatSpec", "PathLike", "as_int", "at_most_one", "dataset_name", "exactly_one", "load_json",
           "read_tab_map", "read_text", "text_lines"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class FormatSpec:
    """One data format: how to recognise a folder in it and how to read one.

    Args:
        name: the format's name (``"d3"``), also the ``format=`` value of :func:`read_folder`.
        description: one line for listings and ``--help``.
        detect: ``detect(folder) -> bool``, cheap (looks at file names only).
        read: ``read(folder, *, max_history, name, ...) -> Dataset``.
        looks_for: what ``detect`` looks for, for the "unknown data format" message.

    Calling a spec reads a folder (so ``FORMATS["d3"](folder)`` works as before).

    Example:
        >>> from recgym.data.formats import FORMATS
        >>> spec = FORMATS["d3"]
        >>> spec.name, "max_history" in spec.options()
        ('d3', True)
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[..., Dataset]
    looks_for: str

    def __call__(self, folder: PathLike, **kwargs: Any) -> Dataset:
        return self.read(folder, **kwargs)

    def options(self) -> list[str]:
        """The keyword options of :attr:`read` (``max_history``, ``name``, ...)."""
        return keyword_names(self.read, exclude=("folder",)) or []


def read_text(path: Path) -> str:
    """The whole text of ``path`` (UTF-8, optional BOM), after the size guard
    (:func:`recgym.data.checks.check_file_size`).

    Example:
        >>> read_text(Path("/nonexistent/x.json"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: ...
    """
    check_file_size(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not UTF-8 text ({err})") from err


def text_lines(path: Path) -> list[str]:
    """Lines of a text file; LF or CRLF, final newline optional. Only ``\\n`` ends a line.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("wb", delete=False) as fh:
        ...     _ = fh.write(b"a\\r\\nb")
        >>> text_lines(Path(fh.name))
        ['a', 'b']
        >>> os.unlink(fh.name)
    """
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_tab_map(path: Path, what: str, *, unique: bool = False) -> list[str]:
    """``value<TAB>index`` lines with indexes 0..N-1 in order (split on the last tab) -> values.

    With ``unique=True`` a value that appears twice is an error naming its second line (an
    ``item2id`` that maps one ASIN to two ids would silently merge two items).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", delete=False) as fh:
        ...     _ = fh.write("B01\\t0\\nB02\\t1\\n")
        >>> read_tab_map(Path(fh.name), "ASIN", unique=True)
        ['B01', 'B02']
        >>> os.unlink(fh.name)
    """
    lines = text_lines(path)
    if not lines:
        raise DataFormatError(path, f"empty {what} file")
    parts = [line.rpartition("\t") for line in lines]
    if not ([p[2] for p in parts] == list(map(str, range(len(parts)))) and all(p[1] for p in parts)):
        for number, (value, tab, index) in enumerate(parts, start=1):  # slow path: find the bad line
            if not tab:
                raise DataFormatError(path, f"expected '<{what}><TAB><index>', got {value[:80]!r}",
                                      line=number)
            if index.strip() != str(number - 1):
                raise DataFormatError(path, f"expected index {number - 1} (indexes must run 0..N-1 in "
                                      f"order), got {index!r}", line=number)
    values = [p[0] for p in parts]
    if unique and len(set(values)) != len(values):
        first: dict[str, int] = {}
        for number, value in enumerate(values, start=1):
            if value in first:
                raise DataFormatError(path, f"{what} {value!r} appears twice (lines {first[value]} and "
                                      f"{number}); each {what} must map to one index", line=number)
            first[value] = number
    return values


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses a repeated key (``json`` would keep only the last value)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def load_json(path: Path) -> Any:
    """Parse a JSON file, refusing what would silently lose or crash:

    * a key repeated in one object (``json`` keeps the last value: a user's first sequence would
      vanish) is an error naming the file and the key;
    * nesting too deep for the parser (``RecursionError``) is an error naming the file;
    * a file over the size limit fails before it is read (:func:`read_text`).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        ...     _ = fh.write('{"7": [1], "7": [2]}')
        >>> load_json(Path(fh.name))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        recgym.data.dataset.DataFormatError: ....json, key '7': the key appears twice in one JSON object...
        >>> os.unlink(fh.name)
    """
    text = read_text(path)
    # Parsing allocates one container per JSON array / object and none of them can form a cycle:
    # pausing the cyclic GC saves its repeated scans (about a third of the parse on Games.inter.json).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
                              line=err.lineno) from err
    except _DuplicateKey as dup:
        raise DataFormatError(path, "the key appears twice in one JSON object (a JSON reader keeps only "
                              "the last value, so the first would be lost); merge or remove the repeated "
                              "entry", key=dup.key) from None
    except RecursionError:
        raise DataFormatError(path, "JSON nested too deeply to parse (thousands of levels); "
                              "the file is damaged or not the expected format") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def at_most_one(paths: Sequence[Path], where: Path, what: str) -> Path | None:
    """The only path of ``paths``, None when empty; several are an error naming them.

    Example:
        >>> at_most_one([Path("a.csv")], Path("."), "CSV")
        PosixPath('a.csv')
    """
    if len(paths) > 1:
        raise DataFormatError(where, f"several {what} files: {', '.join(sorted(p.name for p in paths))}")
    return paths[0] if paths else None


def exactly_one(paths: Sequence[Path], where: Path, what: str) -> Path:
    """The only path of ``paths``; none or several are an error.

    Example:
        >>> exactly_one([], Path("data"), "*.inter.json")
        Traceback (most recent call last):
        recgym.data.dataset.DataFormatError: data: no *.inter.json file found
    """
    found = at_most_one(paths, where, what)
    if found is None:
        raise DataFormatError(where, f"no {what} file found")
    return found


def dataset_name(folder: Path, name: str | None) -> str:
    """``name``, or the folder's own name when None.

    Example:
        >>> dataset_name(Path("/data/office-d3"), None)
        'office-d3'
    """
    return name if name is not None else folder.resolve().name


def as_int(value: Any, what: str = "value") -> int:
    """An int from an int, an integral float or a numeric string; ValueError naming ``what`` otherwise.

    Example:
        >>> as_int("7"), as_int(3.0), as_int("2.0")
        (7, 3, 2)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number: Any = value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = None
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise ValueError(f"{what} is not an integer: {value!r}")
