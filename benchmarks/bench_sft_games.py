"""SFT of an offline ``small`` Qwen2-architecture model on real Games (LC-Rec, SIDs), then test HR/NDCG.

Trains on the leave-one-out train split (``--max-steps`` batches of ``--batch-size`` requests, a
budget that fits a CPU), validates on a seeded sample of valid for early stopping, and scores test
by constrained beam search (width 20) on a seeded sample of ``--test-requests`` requests. Popularity
and the transition model are scored on the same sample in the same run; SASRec's full-test numbers
come from ``benchmarks/results/classic-games.json`` (``bench_classic_games.py``) when present.
Writes ``benchmarks/results/sft-games.json``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_sft_games.py --max-steps 1500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from agents.baselines import PopularityRecommender, TransitionRecommender
from agents.evaluate import evaluate, evaluate_ranker
from agents.policy import LLMPolicy
from agents.sft import SFTConfig, train_sft
from recgym.envs import RecGenTask
from recgym.metrics import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="games-lcrec")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-requests", type=int, default=300)
    parser.add_argument("--test-requests", type=int, default=2000)
    parser.add_argument("--run-dir", default="runs/sft-games")
    parser.add_argument("--out", default="benchmarks/results/sft-games.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    train = RecGenTask(args.dataset, split="train", representation="sid")
    valid = RecGenTask(train.dataset, split="valid", tokenizer=train.items)
    test = RecGenTask(train.dataset, split="test", tokenizer=train.items)
    policy = LLMPolicy.from_config(args.preset, train.items, seed=0)
    config = SFTConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                       eval_requests=args.eval_requests, max_steps=args.max_steps, patience=0)
    start = time.time()
    summary = train_sft(policy, train, valid, config, run_dir=args.run_dir)
    sft_seconds = time.time() - start
    start = time.time()
    results = {"sft": evaluate(policy, test, beam=20, max_requests=args.test_requests)}
    eval_seconds = time.time() - start
    ds = train.dataset
    for name, model in (("popularity", PopularityRecommender()), ("transition", TransitionRecommender())):
        model.fit(ds.train, ds.catalogue.num_items)
        results[name] = evaluate_ranker(model, ds.test, max_requests=args.test_requests)
    print(format_table(results))
    classic = Path("benchmarks/results/classic-games.json")
    out = {
        "dataset": args.dataset, "representation": "sid", "preset": args.preset,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "train_requests_seen": summary["steps"] * args.batch_size, "train_split_size": train.num_requests,
        "sft": summary, "sft_seconds": round(sft_seconds, 1), "test_eval_seconds": round(eval_seconds, 1),
        "test_sample": {"requests": args.test_requests, "seed": 0, "beam": 20},
        "test": results,
        "sasrec_full_test_from_classic_games_json": (
            {k: v for k, v in json.loads(classic.read_text())["models"]["sasrec"].items()
             if k in ("own_ranking", "history_excluded", "fit_seconds")} if classic.exists() else None),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
