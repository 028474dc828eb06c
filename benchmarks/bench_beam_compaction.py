"""Beam search with only the live beams in the model against the previous all-beams loop.

A title catalogue's items differ in length (office-d3: 1 to 97 tokens with SmolLM2's BPE), so
beams finish at different depths; the previous loop kept every finished or pruned beam's row in
the KV cache and ran it through the model and the 49,152-way head until the longest beam ended.
This script loads that loop (``LLMPolicy._beam_batch`` from git revision ``--baseline``), runs
both on the same prompts in the same process, alternating, checks that the items and scores
agree, and writes ``benchmarks/results/beam-compaction[-MODEL].json``.

    python benchmarks/bench_beam_compaction.py --model smollm2-135m --widths 20,50 --requests 2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import agents.model.beam
import agents.model.policy
import agents.model.scoring
from agents.build import build_policy, make_task

ROOT = Path(__file__).resolve().parents[1]


def baseline_beam_batch(rev: str) -> Any:
    """``LLMPolicy._beam_batch`` as it was at git revision ``rev`` (a function to bind as a method)."""
    source = subprocess.run(["git", "show", f"{rev}:agents/policy.py"], cwd=ROOT, check=True,  # its path then
                            capture_output=True, text=True).stdout
    start = source.index("    def _beam_batch(")
    end = source.index("    # -- teacher forcing")
    namespace = {**vars(agents.model.scoring), **vars(agents.model.beam),  # the names it used, now in
                 **vars(agents.model.policy)}                               # three modules
    exec(textwrap.dedent(source[start:end]), namespace)  # noqa: S102 - our own file at a known revision
    return namespace["_beam_batch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="office-d3")
    parser.add_argument("--max-history", type=int, default=5)
    parser.add_argument("--widths", default="20,50")
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--baseline", default="c89475c", help="git revision of the all-beams loop")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    task = make_task("RecGen-v0", "test", {"dataset": args.dataset, "representation": "title",
                                           "max_history": args.max_history}, tokenizer=args.model)
    policy = build_policy(task.items, model=args.model, seed=0)
    policy.model.eval()
    old = baseline_beam_batch(args.baseline)
    new = type(policy)._beam_batch
    rows = np.random.default_rng(0).choice(task.num_requests, args.requests, replace=False)
    prompts, lens = task.prompt_tokens(rows)
    lengths = np.array([len(s) for s in task.items.sequences])
    result: dict[str, Any] = {
        "model": args.model, "dataset": args.dataset, "requests": args.requests, "baseline": args.baseline,
        "item_tokens": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "widths": {},
    }
    for width in (int(w) for w in args.widths.split(",")):
        seconds: dict[str, float] = {}
        outputs = {}
        for name, impl in (("all_beams", old), ("live_beams", new), ("all_beams", old), ("live_beams", new)):
            type(policy)._beam_batch = impl
            tick = time.perf_counter()
            outputs[name] = policy.beam_search(prompts, lens, width=width, batch_size=1)
            took = time.perf_counter() - tick
            seconds[name] = min(seconds.get(name, float("inf")), took)
            print(f"width {width} {name}: {took:.1f} s", flush=True)
        type(policy)._beam_batch = new
        same_items = bool((outputs["all_beams"][0] == outputs["live_beams"][0]).all())
        max_score_diff = float(np.nanmax(np.abs(outputs["all_beams"][1] - outputs["live_beams"][1])))
        result["widths"][str(width)] = {
            "seconds_per_request": {k: v / args.requests for k, v in seconds.items()},
            "speedup": seconds["all_beams"] / seconds["live_beams"],
            "same_items": same_items, "max_score_difference": max_score_diff,
        }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"beam-compaction-{args.model}.json")
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["widths"], indent=2))


if __name__ == "__main__":
    main()
