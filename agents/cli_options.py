"""Command-line options generated from config dataclasses, so each default lives in one place.

A dataclass's fields become ``--flag`` options (``max_steps`` -> ``--max-steps``, with an optional
prefix and renames), typed from its annotations, with the help text taken from the ``Args:``
section of its docstring (one line per field, so no two flags share a help sentence) and the
default from the field itself. :func:`config_from_args` reads
them back into an instance.

Example:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Cfg:
    ...     '''Args:
    ...         steps: optimizer steps.
    ...         lr: learning rate.
    ...         decay: its decay per step (None: constant).
    ...     '''
    ...     steps: int = 10
    ...     lr: float = 1e-3
    ...     decay: float | None = None
    >>> p = argparse.ArgumentParser()
    >>> add_config_arguments(p, Cfg, prefix="rl")
    >>> config_from_args(Cfg, p.parse_args(["--rl-steps", "3"]), prefix="rl")
    Cfg(steps=3, lr=0.001, decay=None)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """Help text per field from the ``Args:`` section of ``cls``'s docstring.

    Each field has its own ``name: text`` line (the flags' help; a test holds every command to
    distinct help texts); a legacy ``a, b: text`` line still gives the text to each name.

    Example:
        >>> from agents.training.rl import RLConfig
        >>> field_docs(RLConfig)["steps"]
        'batches of rollouts (one per step).'
    """
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Args:\s*$", doc, flags=re.MULTILINE)
    if not match:
        return {}
    out: dict[str, str] = {}
    current: list[str] = []
    for line in doc[match.end():].splitlines():
        if line and not line.startswith(" "):  # the section ends at the next unindented line
            break
        entry = re.match(r"^    ([A-Za-z_][\w, ]*):\s*(.*)$", line)
        if entry:
            current = [n.strip() for n in entry.group(1).split(",")]
            for name in current:
                out[name] = entry.group(2).strip()
        elif line.strip() and current:
            for name in current:
                out[name] = f"{out[name]} {line.strip()}"
    return out


def _flag(name: str, prefix: str, renames: Mapping[str, str]) -> str:
    stem = renames.get(name, name).replace("_", "-")
    return f"--{prefix}-{stem}" if prefix else f"--{stem}"


def _dest(name: str, prefix: str) -> str:
    return f"{prefix.replace('-', '_')}_{name}" if prefix else name


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """``(type, optional?)`` of an annotation like ``int``, ``int | None`` or ``Optional[str]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return annotation, False


def _parse_optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    only: Collection[str] | None = None,
    exclude: Collection[str] = (),
    renames: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    unset: bool = False,
) -> None:
    """Add one option per field of the dataclass ``cls`` to ``parser``.

    Args:
        prefix: put before every flag (``sft`` -> ``--sft-lr``) and destination (``sft_lr``).
        only, exclude: which fields become options.
        renames: a shorter flag for a field (``{"max_steps": "steps"}``).
        defaults: a command's own defaults for some fields (declared once, where the command is).
        unset: default every option to None ("keep the config's value"), e.g. for preset overrides.
    """
    renames = renames or {}
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude or not f.init:
            continue
        kind, optional = _base_type(hints[f.name])
        if kind not in (int, float, str, bool):
            continue  # structured fields (dicts, lists) stay settable through --set-style options
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        help_text = docs.get(f.name, "")
        shown = None if unset else default
        if not unset:
            help_text = f"{help_text} (default: {shown})".strip()
        flag, dest = _flag(f.name, prefix, renames), _dest(f.name, prefix)
        if kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=shown,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=dest, type=_parse_optional(kind) if optional else kind,
                                default=shown, metavar=kind.__name__.upper(), help=help_text)


def config_values(
    cls: type, args: argparse.Namespace, *, prefix: str = "", only: Collection[str] | None = None,
    exclude: Collection[str] = (), skip_none: bool = False,
) -> dict[str, Any]:
    """The field values :func:`add_config_arguments` parsed into ``args`` (by field name)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        dest = _dest(f.name, prefix)
        if hasattr(args, dest):
            value = getattr(args, dest)
            if not (skip_none and value is None):
                out[f.name] = value
    return out


def config_from_args(
    cls: type, args: argparse.Namespace, *, prefix: str = "", exclude: Collection[str] = (), **extra: Any,
) -> Any:
    """An instance of ``cls`` from parsed options, plus ``extra`` field values."""
    return cls(**{**config_values(cls, args, prefix=prefix, exclude=exclude), **extra})


__all__ = ["add_config_arguments", "config_from_args", "config_values", "field_docs"]
