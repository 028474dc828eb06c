"""Argument checks shared by recgym's entry points: one wording, one place, no silent coercion.

Each check raises where the bad value came in and names the argument, instead of letting a float be
truncated to an int, a bool pass as 0 / 1, a string be read as a sequence of items or a NaN flow
into rewards. A value of the wrong kind is a ``TypeError``; a value of the right kind outside its
range is a ``ValueError``. Integers are Python ints, numpy integers or 0-d integer arrays; bools
are never integers here, and floats never are, even integral ones (``2.0``).

The checks are meant for settings and reset options (once per call), never for per-step data;
array checks are vectorized (one dtype test and one reduction).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

__all__ = ["available_memory", "check_bool", "check_choice", "check_int", "check_memory", "check_options",
           "check_real", "format_bytes", "int_array"]


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _scalar(value: Any) -> Any:
    return value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in {minimum}..{maximum}"
    return f">= {minimum}" if minimum is not None else f"<= {maximum}"


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int, or an error naming ``name``: floats, bools and strings are refused.

    Example:
        >>> check_int(np.int32(3), "row", minimum=0)
        3
        >>> check_int(1.9, "options['row']")
        Traceback (most recent call last):
        ...
        TypeError: options['row'] must be an int, got 1.9 (float)
        >>> check_int(0, "num_envs", minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: num_envs must be >= 1, got 0
    """
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {_bounds(minimum, maximum)}, got {number}")
    return number


def check_real(value: Any, name: str, *, minimum: float | None = None) -> float:
    """``value`` as a finite float, or an error naming ``name`` (NaN, inf, bools and strings are refused).

    Example:
        >>> check_real(2, "hit_reward")
        2.0
        >>> check_real(float("nan"), "hit_reward")
        Traceback (most recent call last):
        ...
        ValueError: hit_reward must be a finite number, got nan
    """
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool; anything else (``"no"``, 0, None) is a TypeError naming ``name``.

    Example:
        >>> check_bool(np.True_, "strict")
        True
        >>> check_bool("no", "strict")
        Traceback (most recent call last):
        ...
        TypeError: strict must be True or False, got 'no' (str)
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ValueError naming ``name`` and the choices.

    Example:
        >>> check_choice("sids", "representation", ("title", "sid"))
        Traceback (most recent call last):
        ...
        ValueError: representation must be one of ('title', 'sid'), got 'sids'
    """
    try:
        known = value in choices
    except TypeError:  # an unhashable value asked of a set
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def int_array(
    values: Any, name: str, *, ndim: int = 1, minimum: int | None = None, maximum: int | None = None
) -> np.ndarray:
    """``values`` as an int64 array of ``ndim`` dimensions, checked in one vectorized pass.

    Lists, tuples and integer arrays are accepted; strings (which would read as a sequence of
    characters), floats (even integral ones), bools and ragged nesting are errors naming ``name``,
    and so is a value outside ``minimum..maximum`` (the first one found is shown). An empty
    sequence is an empty int64 array.

    Example:
        >>> int_array((3, np.int8(4)), "history").tolist()
        [3, 4]
        >>> int_array("123", "options['history']")
        Traceback (most recent call last):
        ...
        TypeError: options['history'] must be a sequence of ints, got the string '123'
        >>> int_array([1.7], "options['history']")
        Traceback (most recent call last):
        ...
        TypeError: options['history'] must hold ints, got dtype float64: [1.7]
        >>> int_array([1, 999], "history", minimum=0, maximum=299)
        Traceback (most recent call last):
        ...
        ValueError: history must hold values in 0..299, got 999 at index (1,)
    """
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got the string {values!r}")
    try:
        array = np.asarray(values)
    except ValueError as err:  # ragged nesting
        raise TypeError(f"{name} must be a {ndim}-D sequence of ints: {err}") from None
    if array.dtype.kind not in "iu":
        if array.size or array.dtype.kind not in "fO":  # [] is float64, () of nothing is fine too
            shown = np.array2string(array, threshold=8) if array.dtype.kind != "O" else repr(values)
            raise TypeError(f"{name} must hold ints, got dtype {array.dtype}: {shown}")
    elif array.ndim == 1 and isinstance(values, (list, tuple)):
        # numpy reads [True, 2] as ints: find Python bools in flat lists (histories, rows; short).
        kinds = set(map(type, values))
        if bool in kinds or np.bool_ in kinds:
            raise TypeError(f"{name} must hold ints, not bools: {values!r}")
    if array.ndim == 0 and ndim > 0:
        raise TypeError(f"{name} must be a sequence of ints, got {_describe(values)}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}: {values!r}")
    array = array.astype(np.int64, copy=False)
    if array.size and ((minimum is not None and array.min() < minimum)
                       or (maximum is not None and array.max() > maximum)):
        low = minimum if minimum is not None else np.iinfo(np.int64).min
        high = maximum if maximum is not None else np.iinfo(np.int64).max
        where = tuple(int(i) for i in np.argwhere((array < low) | (array > high))[0])
        raise ValueError(f"{name} must hold values {_bounds(minimum, maximum)}, got {array[where]} "
                         f"at index {where}")
    return array


def check_options(
    options: Any, known: Collection[str], where: str, *, unknown: str = "error"
) -> dict[str, Any]:
    """The reset ``options`` as a dict (None: empty), refusing keys outside ``known``.

    The one check behind every RecGen env's ``reset(options=...)``: an unknown key (a typo such as
    ``"rwo"`` for ``"row"``) is an error listing the known keys, never silently ignored. With
    ``unknown="warn"`` it is a ``UserWarning`` with the same message and the key is dropped: only
    for the PettingZoo env, whose own API test resets with a made-up key.

    Example:
        >>> check_options({"rwo": 3}, ("row", "history", "target"), "RecGenEnv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown reset options ['rwo'] for RecGenEnv (did you mean 'row'?); known options: ...
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{where} options must be a dict or None, got {_describe(options)}")
    unknown_keys = sorted((k for k in options if k not in known), key=str)
    if unknown_keys:
        import difflib  # only on this error path: keeps `import recgym` light
        names = [k for k in known if isinstance(k, str)]
        hints = [m for k in unknown_keys if isinstance(k, str)
                 for m in difflib.get_close_matches(k, names, n=1)]
        hint = f" (did you mean {', '.join(map(repr, hints))}?)" if hints else ""
        message = f"unknown reset options {unknown_keys} for {where}{hint}; known options: {sorted(known)}"
        if unknown != "warn":
            raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=4)  # check_options < request_from_options < reset
        return {k: v for k, v in options.items() if k in known}
    return dict(options)


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now: Linux's ``MemAvailable``, else psutil's, else None.

    Example:
        >>> available_memory() is None or available_memory() > 0
        True
    """
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def format_bytes(count: float) -> str:
    """``count`` bytes for people: ``'1.5 GiB'``.

    Example:
        >>> format_bytes(1536 * 2**20), format_bytes(12)
        ('1.5 GiB', '12 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_memory(needed: float, setting: str, what: str, remedy: str = "", *,
                 available: int | None = None) -> None:
    """A ValueError naming ``setting`` when ``what`` needs more than the memory available, before it is
    allocated (an absurd size otherwise ends in a MemoryError, sometimes after minutes of work).

    ``needed`` is a lower bound in bytes; ``available`` defaults to :func:`available_memory` (no
    check when it is unknown).

    Example:
        >>> check_memory(2**40, "max_history=10**9", "the windows", available=2**30)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: max_history=10**9: the windows need at least 1.0 TiB, more than the 1.0 GiB of memory ...
    """
    available = available_memory() if available is None else available
    if available is None or needed <= available:
        return
    tail = f"; {remedy}" if remedy else ""
    raise ValueError(f"{setting}: {what} need at least {format_bytes(needed)}, more than the "
                     f"{format_bytes(available)} of memory available here{tail}")
