"""Seconds per SFT step (forward, backward, AdamW) of the Games sweep's recipes, on this CPU.

Builds each ``--configs`` recipe of ``sweep_sft_games.py`` (fresh weights, its batch and objective)
and times ``--steps`` optimizer steps on seeded batches of its rows after ``--warmup`` untimed
ones; reports the median and the targets per second. ``--label`` names the measurement, and results
add up in ``--out`` under it, so the same script run from an older checkout (``git worktree add``,
then this file copied in) gives the "before" beside the "after":

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_sft_step.py --label after \\
        --configs h128-atomic-d0.2,h128-seq-d0.2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_sft_games import CONFIGS, build_run  # noqa: E402


def time_steps(name: str, steps: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    """Median seconds of an SFT step of recipe ``name`` and its targets per second."""
    train, _, policy, config, _, objective = build_run(name, 100, 1, 1, seed)
    policy.model.train()
    opt = torch.optim.AdamW(policy.model.parameters(), lr=config.lr)
    rng = np.random.default_rng(seed)
    seconds = []
    for i in range(warmup + steps):
        rows = rng.choice(objective.size, config.batch_size, replace=False)
        start = time.perf_counter()
        loss, _ = objective.loss(rows)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    step = float(np.median(seconds))
    targets_per_row = train.num_requests / objective.size  # windows hold several targets
    return {"step_seconds": round(step, 4),
            "targets_per_second": round(config.batch_size * targets_per_row / step, 1),
            "batch": config.batch_size, "level": objective.level}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="the name of this measurement (e.g. before, after)")
    parser.add_argument("--configs", default="h128-atomic-d0.2,h128-seq-d0.2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sft-step.json"))
    args = parser.parse_args()
    unknown = [n for n in args.configs.split(",") if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    entry = {"commit": commit, "threads": args.threads, "steps": args.steps,
             "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
             "configs": {}}
    for name in args.configs.split(","):
        entry["configs"][name] = time_steps(name, args.steps, args.warmup)
        print(f"{args.label} {name}: {entry['configs'][name]}", flush=True)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[args.label] = entry
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
