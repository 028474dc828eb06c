"""Argument and input checks shared by the readers, the raw pipelines, the generator and the registry.

* :func:`check_max_history`: one rule and one message for ``max_history`` everywhere.
* :func:`check_keywords`: unknown keyword options (e.g. from ``--dataset-set``) are a ValueError
  naming them and the known ones, not a ``TypeError`` traceback.
* :func:`check_file_size`: files that are read whole (JSON, CSV, ``id<TAB>index`` maps) must not be
  larger than :func:`max_file_bytes` (1 GiB unless ``$RECGYM_MAX_FILE_BYTES`` says otherwise); the
  check looks at the size on disk before a single byte is read. Raw JSON-lines files of the
  pipelines are streamed line by line and are not limited.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from recgym.data.dataset import DataFormatError

__all__ = ["DEFAULT_MAX_FILE_BYTES", "MAX_FILE_BYTES_ENV", "check_file_size", "check_keywords",
           "check_max_history", "keyword_names", "max_file_bytes"]

#: Files read whole are refused above this size (about 10x the memory while parsing JSON).
DEFAULT_MAX_FILE_BYTES = 1 << 30
#: The environment variable that overrides :data:`DEFAULT_MAX_FILE_BYTES` (bytes; 0 = no limit).
MAX_FILE_BYTES_ENV = "RECGYM_MAX_FILE_BYTES"


def check_max_history(max_history: object) -> None:
    """Raise ValueError unless ``max_history`` is an int >= 1 (bools are refused too).

    Example:
        >>> check_max_history(10)
        >>> check_max_history(0)
        Traceback (most recent call last):
        ValueError: max_history must be a positive int (the number of past items kept per example), got 0
    """
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ValueError("max_history must be a positive int (the number of past items kept per example), "
                         f"got {max_history!r}")


def keyword_names(func: Callable[..., Any], exclude: Iterable[str] = ()) -> list[str] | None:
    """Sorted names ``func`` accepts as keywords (None when it takes ``**kwargs``).

    Example:
        >>> def f(a, *, b=1, c=2): ...
        >>> keyword_names(f, exclude=["a"])
        ['b', 'c']
    """
    params = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    skip = set(exclude)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted(p.name for p in params if p.kind in kinds and p.name not in skip)


def check_keywords(
    func: Callable[..., Any], kwargs: Mapping[str, Any], what: str, *,
    exclude: Iterable[str] = (), extra: Iterable[str] = (),
) -> None:
    """Raise ValueError when ``kwargs`` holds a name ``func`` does not take as a keyword.

    Args:
        func: the function the options go to.
        kwargs: the options.
        what: names the receiver in the message, e.g. ``"dataset 'synthetic'"``.
        exclude: keywords of ``func`` that the caller sets itself (not accepted from ``kwargs``).
        extra: names the caller accepts in addition (e.g. a source's ``category``).

    Example:
        >>> def make(n=1, *, seed=0): ...
        >>> check_keywords(make, {"seed": 3}, "make")
        >>> check_keywords(make, {"sede": 3}, "make")
        Traceback (most recent call last):
        ValueError: unknown option 'sede' for make; known options: n, seed
    """
    known = keyword_names(func, exclude)
    if known is None:
        return
    known = sorted({*known, *extra})
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {names} for {what}; "
                         f"known options: {', '.join(known) or '(none)'}")


def max_file_bytes() -> int | None:
    """The size limit for files read whole: ``$RECGYM_MAX_FILE_BYTES`` (bytes, ``0`` = no limit)
    when set, else :data:`DEFAULT_MAX_FILE_BYTES` (1 GiB). None means no limit.

    Example:
        >>> max_file_bytes() == DEFAULT_MAX_FILE_BYTES or "RECGYM_MAX_FILE_BYTES" in os.environ
        True
    """
    text = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_FILE_BYTES
    try:
        limit = int(text)
    except ValueError:
        raise ValueError(f"${MAX_FILE_BYTES_ENV} must be a number of bytes (0 = no limit), "
                         f"got {text!r}") from None
    if limit < 0:
        raise ValueError(f"${MAX_FILE_BYTES_ENV} must be >= 0 (0 = no limit), got {limit}")
    return limit or None


def check_file_size(path: str | os.PathLike[str]) -> int:
    """The size of ``path`` in bytes; :class:`DataFormatError` when it is over :func:`max_file_bytes`.

    Only ``stat`` is called, so a 2 GB file fails at once instead of after being read.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as fh:
        ...     _ = fh.write(b"[1, 2]")
        >>> check_file_size(fh.name)
        6
        >>> os.unlink(fh.name)
    """
    size = Path(path).stat().st_size
    limit = max_file_bytes()
    if limit is not None and size > limit:
        raise DataFormatError(path, f"file too large to read whole: {size:,} bytes, the limit is {limit:,}; "
                              f"raise it with ${MAX_FILE_BYTES_ENV}=<bytes> (0 = no limit) if the file is "
                              "genuine and the machine has the memory")
    return size
