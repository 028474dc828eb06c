"""Merge ``recgym bench`` folders that ran the same preset and agents with different seeds, then report.

On a machine with several cores, one bench process per seed (each with its own ``--out``) finishes
sooner than one process running the seeds in turn; this writes the one table they make together
(``results.json``, ``results.md`` with the paired bootstrap intervals, ``metrics.png``,
``curves.png``) into ``--out``:

    python benchmarks/merge_bench.py runs/bench-cpu-s0 runs/bench-cpu-s1 runs/bench-cpu-s2 \\
        --out benchmarks/results/rl-games-cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.bench.report import merge_results, write_report
from agents.build import json_text
from agents.training.tracking import write_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="bench --out folders holding results.json")
    parser.add_argument("--out", required=True, help="where the merged results and report go")
    args = parser.parse_args()
    parts = []
    for folder in args.folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise SystemExit(f"merge_bench: {path} does not exist (has that bench written a seed yet?)")
        parts.append(json.loads(path.read_text()))
    merged = merge_results(parts)
    merged["merged_from"] = [str(f) for f in args.folders]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(write_report(merged, out))
    write_atomically(out / "results.json", json_text(merged))


if __name__ == "__main__":
    main()
