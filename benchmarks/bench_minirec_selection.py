"""MiniRec's representativeness directions u_i with and without a shared prompt per group.

Both variants need request i's whole group (N proxy rollouts + the target) teacher-forced: the
hidden variant (u_i = H_i g_i w.r.t. the final hidden states) and the parameter-space one
(projected gradients of the last block's Linear weights). The full forward runs
``[prompt; response]`` for every member; the shared one runs each prompt once and expands its KV
cache to the group (``_Groups.hidden``). Prompts are far longer than responses, so the shared
forward should cost about 1/G as much. Same policy, pool, rollouts and batch; the directions
agree (checked here and by tests). Real Games (LC-Rec SIDs) with the ``small`` preset's
architecture; timing does not depend on training, so the policy is freshly initialised unless
``--policy`` names a trained one. Medians over ``--repeats`` passes over the pool, one thread.
Writes ``benchmarks/results/minirec-selection.json``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_minirec_selection.py
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from agents.bench.report import machine_info
from agents.build import make_task, parse_key_values
from agents.minirec import GradientProjector, hidden_directions, proxy_rollouts
from agents.model.policy import LLMPolicy
from agents.training.evaluate import select_rows
from agents.training.tracking import write_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="RecGen-Games-v0")
    parser.add_argument("--set", action="append", default=["max_history=5"], metavar="KEY=VALUE",
                        help="task option (default: the cpu bench preset's max_history=5)")
    parser.add_argument("--policy", help="a trained policy folder (default: a fresh `small` policy)")
    parser.add_argument("--pool", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=4, help="N proxy rollouts per request")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per differentiated batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/minirec-selection.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    task = parse_key_values(args.set)
    if args.policy:
        policy = LLMPolicy.from_pretrained(args.policy)
        train = make_task(args.env, "train", task, tokenizer=policy.items)
    else:
        train = make_task(args.env, "train", task)
        policy = LLMPolicy.from_config("small", train.items, seed=0)
    rows = select_rows(train.num_requests, args.pool, seed=0)
    proxy = proxy_rollouts(policy, train, rows, rollouts=args.rollouts, progress=False)
    batches = [slice(i, i + args.batch_size) for i in range(0, len(rows), args.batch_size)]

    projector = GradientProjector(policy, layers=1, d_out=12, d_in=12, seed=0)  # as variant="params"
    variants = {"hidden": partial(hidden_directions, policy), "params": partial(projector, policy)}

    def directions(variant: str, shared: bool) -> torch.Tensor:
        return torch.cat([variants[variant](train, rows[b], proxy.responses[b], proxy.rewards[b],
                                            shared_prompt=shared) for b in batches])

    timings: dict[str, dict] = {}
    for variant in variants:
        seconds: dict[str, list[float]] = {"full_forward": [], "shared_prompt": []}
        results: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for name, shared in (("full_forward", False), ("shared_prompt", True)):
                tick = time.perf_counter()
                results[name] = directions(variant, shared)
                seconds[name].append(time.perf_counter() - tick)
        a, b = results["full_forward"].double(), results["shared_prompt"].double()
        median = {name: float(np.median(v)) for name, v in seconds.items()}
        timings[variant] = {
            "dim": a.shape[1],
            "seconds_median": {k: round(v, 3) for k, v in median.items()},
            "seconds_all": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
            "speedup": round(median["full_forward"] / median["shared_prompt"], 2),
            "min_cosine_between_modes": float(torch.nn.functional.cosine_similarity(a, b, dim=1).min()),
            "max_relative_difference": float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-30)).max()),
        }
    prompt_len = float(np.mean(train.prompt_tokens(rows)[1]))
    response_len = float(np.mean((proxy.responses >= 0).sum(axis=2)))
    out = {
        "benchmark": "MiniRec representativeness directions u_i for a pool of requests",
        "env": args.env, "task": task, "policy": args.policy or "fresh `small` preset",
        "pool": len(rows), "rollouts": args.rollouts, "group": args.rollouts + 1,
        "batch_size": args.batch_size, "repeats": args.repeats,
        "mean_prompt_tokens": round(prompt_len, 1), "mean_response_tokens": round(response_len, 2),
        "variants": timings,
        "machine": machine_info("cpu"),
    }
    print(json.dumps({v: {k: t[k] for k in ("seconds_median", "speedup")} for v, t in timings.items()}))
    write_atomically(Path(args.out), json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
