"""The ``recgym`` console command.

``recgym data list | describe NAME | download NAME`` work with datasets; training and evaluation
commands join as the learners land. Heavy imports (torch, transformers) happen inside commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _dataset_kwargs(values: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"recgym: --set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _print_describe(summary: dict[str, Any]) -> None:
    print(f"dataset {summary['name']}: {summary['items']} items, users {summary['users']}, "
          f"distinct titles {summary['titles']}, distinct SIDs {summary['sids']} "
          f"({summary['sid_levels']} levels), max history {summary['max_history']}")
    print(f"{'split':<6} {'examples':>9} {'users':>7} {'targets':>8} {'hist mean':>9} {'min':>4} {'max':>4}")
    for split, s in summary["splits"].items():
        def cell(v: Any) -> str:
            return "-" if v is None else str(v)

        print(f"{split:<6} {s['examples']:>9} {cell(s['users']):>7} {s['distinct_targets']:>8} "
              f"{cell(s['history_len_mean']):>9} {cell(s['history_len_min']):>4} "
              f"{cell(s['history_len_max']):>4}")
    p = summary["target_popularity"]
    print(f"target popularity: top 1% of items get {100 * p['top_1pct_share']:.1f}% of targets; "
          f"max {p['max_count']}, median {p['median_count']}, never a target {p['items_never_a_target']}")


def cmd_data(args: argparse.Namespace) -> int:
    from recgym.data import registry

    if args.data_command == "list":
        for name, text in registry.available().items():
            print(f"{name:<16} {text}")
        return 0
    kwargs = _dataset_kwargs(args.set)
    download = args.data_command == "download"
    dataset = registry.load(args.name, format=args.format, max_history=args.max_history,
                            download=download, **kwargs)
    summary = dataset.describe()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_describe(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recgym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="list, download/prepare and describe datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="dataset names and where they come from")
    for name, text in (("describe", "load a dataset (from cache when present) and summarise it"),
                       ("download", "download raw files if needed, prepare, cache and summarise")):
        p = data_sub.add_parser(name, help=text)
        p.add_argument("name", help="a dataset name (see `recgym data list`) or a folder path")
        p.add_argument("--format", choices=["d3", "lcrec", "sprec"], help="folder format (default: detect)")
        p.add_argument("--max-history", type=int, default=10)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="extra loader option, e.g. --set num_items=500 (repeatable)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
    data.set_defaults(func=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recgym`` command.

    Example:
        >>> main(["data", "describe", "synthetic", "--set", "num_items=300", "--set", "num_users=100",
        ...       "--json"])  # doctest: +ELLIPSIS
        {...
        0
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"recgym: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
