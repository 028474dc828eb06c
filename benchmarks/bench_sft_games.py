"""From-scratch SFT on real Games (LC-Rec SIDs, leave-one-out), tested under the reference protocol.

Trains one recipe of ``sweep_sft_games.py`` (``--config``; the compact prompt and sequence-level SFT
unless the recipe says otherwise) with early stopping on valid NDCG@10, then tests the best weights
by constrained beam search of width 50 with the reference scoring on a seeded sample of
``--test-requests`` test requests (all 50,546 with ``--test-requests 0``), reports HR/NDCG@{5, 10,
20, 50} under the reference protocol (every item) and again with each request's history excluded
from the search (``sft_history_excluded``: the view SASRec's paper reports), SFT wall time and
targets trained per second, popularity on the same requests (both views), our SASRec's numbers from
``sasrec-games.json`` when present, and the sampled-rollout hit rate (temperature 1, groups of
``--group``) that an RL learner starts from. The run folder resumes; writes
``benchmarks/results/sft-games.json`` and beside it ``sft-games.ranks.npz`` (the test rows, and
each one's first-hit rank for SFT and popularity in both views), which ``compare_games.py`` pairs
with SASRec's. On a finished run folder it only tests.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_sft_games.py --config h128-seq-d0.2 --patience 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_sft_games import CONFIGS, SIZES, build_run, curve_of  # noqa: E402

from agents.baselines import PopularityRecommender  # noqa: E402
from agents.model.policy import LLMPolicy, make_rollout_env  # noqa: E402
from agents.training.evaluate import evaluate, evaluate_ranker  # noqa: E402
from agents.training.sft import train_sft  # noqa: E402
from recgym.envs import RecGenTask  # noqa: E402
from recgym.metrics import format_table  # noqa: E402


def rollout_hits(
    policy: LLMPolicy, task: RecGenTask, requests: int, group: int, seed: int,
) -> dict[str, float]:
    """Hit rate of sampled rollouts and the share of groups of ``group`` with at least one hit."""
    rows = np.random.default_rng(seed).choice(task.num_requests, size=requests, replace=False)
    per_batch = max(1, 256 // group)
    envs = make_rollout_env(task, per_batch * group)
    hits = []
    for start in range(0, requests, per_batch):
        chunk = rows[start:start + per_batch]
        if len(chunk) < per_batch:
            envs = make_rollout_env(task, len(chunk) * group)
        ro = policy.rollout(envs, group_size=group, rows=chunk, seed=seed + start)
        hits.append(ro.hits.cpu().numpy().reshape(len(chunk), group))
    h = np.concatenate(hits)
    return {"requests": requests, "group": group, "temperature": 1.0, "hit_rate": float(h.mean()),
            "groups_with_a_hit": float(h.any(axis=1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="h64-b32-d0.1", help=f"one of {', '.join(CONFIGS)}")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--eval-requests", type=int, default=2000)
    parser.add_argument("--test-requests", type=int, default=10000, help="0: every test request")
    parser.add_argument("--rollout-requests", type=int, default=2000)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run-dir", help="the run folder (default: the sweep's, runs/sft-sweep/CONFIG, so "
                        "a swept recipe is tested without training again)")
    parser.add_argument("--out", default="benchmarks/results/sft-games.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.epochs:
        CONFIGS[args.config] = {**CONFIGS[args.config], "epochs": args.epochs}
    train, valid, policy, config, cfg, _ = build_run(args.config, args.eval_requests, 1, args.patience,
                                                     progress=True)
    test = RecGenTask(train.dataset, split="test", tokenizer=train.items)
    start = time.time()
    run_dir = args.run_dir or f"runs/sft-sweep/{args.config}"
    summary = train_sft(policy, train, valid, config, run_dir=run_dir)
    sft_seconds = time.time() - start
    curve = curve_of(Path(run_dir), summary["batches_per_epoch"])  # training seconds over resumed segments
    train_clock = curve[-1]["train_seconds"] if curve else sft_seconds
    targets = summary["steps"] / summary["batches_per_epoch"] * train.num_requests
    requests = args.test_requests or None
    ds = train.dataset
    popularity = PopularityRecommender().fit(ds.train, ds.catalogue.num_items)
    tested: dict[str, dict] = {}
    test_seconds = {}
    for suffix, exclude in (("", False), ("_history_excluded", True)):
        start = time.time()
        tested[f"sft{suffix}"] = evaluate(policy, test, beam=50, max_requests=requests, seed=0,
                                          per_request=True, exclude_history=exclude)
        test_seconds[f"sft{suffix}"] = round(time.time() - start, 1)
        tested[f"popularity{suffix}"] = evaluate_ranker(popularity, ds.test, max_requests=requests,
                                                        per_request=True, exclude_history=exclude)
    # per-request first-hit ranks (0-based, -1 beyond 50) beside the JSON, for compare_games.py
    ranks_file = Path(args.out).with_suffix(".ranks.npz")
    rows = np.asarray(tested["sft"]["rows"])
    for m in tested.values():
        assert np.array_equal(m.pop("rows"), rows)  # one seeded sample for every view
    np.savez_compressed(ranks_file, rows=rows,
                        **{name: np.asarray(m.pop("first_hit_ranks"), np.int8) for name, m in tested.items()})
    rollouts = rollout_hits(policy, train, args.rollout_requests, args.group, seed=0)
    print(format_table(tested))
    sasrec_file = Path(args.out).with_name("sasrec-games.json")
    out = {
        "dataset": "games-lcrec", "representation": "sid", "recipe": args.config, "settings": cfg,
        "patience": args.patience, "command": " ".join(["python", *sys.argv]),
        "model": SIZES[cfg["size"]], "parameters": sum(p.numel() for p in policy.model.parameters()),
        "level": summary["level"], "sft": {k: v for k, v in summary.items() if k != "valid_history"},
        "valid_history": summary["valid_history"],
        "sft_wall_seconds_this_call": round(sft_seconds, 1), "sft_train_seconds": train_clock,
        "targets_trained": int(targets), "targets_per_second": round(targets / max(train_clock, 1e-9), 1),
        "test_protocol": {"split": "test", "requests": tested["sft"]["requests"], "sample_seed": 0,
                          "beam": 50,
                          "scoring": "reference (full-vocabulary log-softmax, disallowed masked, no "
                                     "renormalisation, no length penalty)"},
        "test": tested, "test_seconds": test_seconds,
        "rollouts_from_sft": rollouts,
        "sasrec": json.loads(sasrec_file.read_text()) if sasrec_file.exists() else None,
        "reference": {"TIGER NDCG@10 (LC-Rec paper, LC-Rec Games)": 0.0501},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch": torch.__version__},
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
