"""Request-level against sequence-level SFT on real Games: targets trained per second, same model and data.

Both levels train the same objective on the compact prompt (last 20 items); a request-level batch
is ``--batch`` rows of the train split (one prompt-plus-target forward each), a sequence-level
batch is ``--batch`` windows of users' sequences (one forward teaching every target in it). Steps
(forward, backward, AdamW) alternate between the two levels so that a busy machine slows both
alike; the batches are drawn with a fixed seed. Writes ``benchmarks/results/sft-levels-games.json``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_sft_levels.py --sizes tiny,mini
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from agents.model.policy import LLMPolicy
from agents.training.sft import SFTObjective, sft_objective
from recgym.envs import RecGenTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,mini")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/sft-levels-games.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = RecGenTask("games-lcrec", split="train", representation="sid", template="compact", max_history=20,
                      vocab_size=257)
    rng = np.random.default_rng(0)
    results = {}
    for size in args.sizes.split(","):
        policy = LLMPolicy.from_config(size, task.items, seed=0)
        optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
        levels = {"request": SFTObjective(policy, task), "sequence": sft_objective(policy, task, "sequence")}
        seconds = {name: 0.0 for name in levels}
        targets = {name: 0 for name in levels}
        for step in range(args.steps + 1):  # step 0 warms up and is not counted
            for name, objective in levels.items():
                rows = rng.choice(objective.size, size=args.batch, replace=False)
                tick = time.perf_counter()
                loss, _ = objective.loss(rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step:
                    seconds[name] += time.perf_counter() - tick
                    # target items in the batch: one per request, or the windows' targets
                    windows = getattr(objective, "windows", None)
                    targets[name] += len(rows) if windows is None else int(windows.targets[rows].sum())
        per_second = {name: targets[name] / seconds[name] for name in levels}
        results[size] = {
            "parameters": sum(p.numel() for p in policy.model.parameters()),
            "seconds_per_step": {name: round(seconds[name] / args.steps, 4) for name in levels},
            "targets_per_step": {name: targets[name] / args.steps for name in levels},
            "targets_per_second": {name: round(v, 1) for name, v in per_second.items()},
            "speedup": round(per_second["sequence"] / per_second["request"], 2),
        }
        print(size, json.dumps(results[size]))
    out = {"dataset": "games-lcrec", "template": "compact", "max_history": 20, "batch": args.batch,
           "steps": args.steps, "threads": args.threads, "sizes": results,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
