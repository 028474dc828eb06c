"""SFT -> GRPO and SFT -> RISER on real Games (LC-Rec, SIDs) with the same rollout budget.

Both learners start from the same SFT policy (``--sft``, e.g. ``runs/sft-games-5k/best`` from
``bench_sft_games.py``), sample the same requests in the same order and draw the same number of
rollouts per request (GRPO's group n = RISER's oversampling m), for the same number of steps, with
the same optimizer settings. Test HR/NDCG@{1,3,5,10,20} on a seeded sample of test requests, for
the SFT start, the best-on-valid weights and the final weights of each run; hit rate, entropy and
valid HR@10 curves in a PNG. Writes ``benchmarks/results/rl-games.json`` and ``rl-games.png``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_rl_games.py --sft runs/sft-games-5k/checkpoint \
        --steps 300 --eval-every 100 --eval-requests 1000   # add --lr 5e-4 --out ...-lr5e-4.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from agents.bench.plots import plot_training_curves
from agents.learners import make_learner
from agents.model.policy import LLMPolicy
from agents.training.checkpoint import load_weights
from agents.training.evaluate import evaluate
from agents.training.rl import RLConfig, train_rl
from agents.training.tracking import MetricLogger
from recgym.envs import RecGenTask
from recgym.metrics import format_table

CURVE_KEYS = ("step", "rollouts", "hit_rate", "entropy", "zero_adv_frac", "unique_per_group")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="the SFT policy folder both runs start from")
    parser.add_argument("--dataset", default="games-lcrec")
    parser.add_argument("--learners", default="grpo,riser")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--requests-per-step", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=20, help="per request: GRPO's n, RISER's m")
    parser.add_argument("--group", type=int, default=16, help="RISER's group n after de-duplication")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-requests", type=int, default=500)
    parser.add_argument("--test-requests", type=int, default=2000)
    parser.add_argument("--run-dir", default="runs/rl-games")
    parser.add_argument("--out", default="benchmarks/results/rl-games.json")
    args = parser.parse_args()
    start = LLMPolicy.from_pretrained(args.sft)
    train = RecGenTask(args.dataset, split="train", tokenizer=start.items)
    valid = RecGenTask(train.dataset, split="valid", tokenizer=start.items)
    test = RecGenTask(train.dataset, split="test", tokenizer=start.items)
    config = RLConfig(steps=args.steps, requests_per_step=args.requests_per_step, lr=args.lr,
                      eval_every=args.eval_every, eval_requests=args.eval_requests)

    def test_metrics(policy: LLMPolicy) -> dict[str, float]:
        return evaluate(policy, test, beam=20, max_requests=args.test_requests, seed=0)

    table = {"sft": test_metrics(start)}
    runs: dict[str, dict] = {}
    curves = {}
    for name in args.learners.split(","):
        settings = {"group_size": args.rollouts} if name == "grpo" else {
            "group_size": args.group, "oversample": args.rollouts}
        learner = make_learner(name, **settings)
        policy = LLMPolicy.from_pretrained(args.sft)
        run = Path(args.run_dir) / name
        tick = time.time()
        summary = train_rl(policy, learner, train, valid, config, run_dir=run)
        seconds = time.time() - tick
        table[f"sft -> {name} (best valid)"] = test_metrics(policy)
        load_weights(policy, run / "checkpoint")
        table[f"sft -> {name} (final)"] = test_metrics(policy)
        records = MetricLogger.read(run)
        curves[name] = records
        steps = [r for r in records if "loss" in r]
        runs[name] = {"summary": summary, "train_seconds": round(seconds, 1),
                      "entropy_first_last": [steps[0]["entropy"], steps[-1]["entropy"]],
                      "hit_rate_first_last": [steps[0]["hit_rate"], steps[-1]["hit_rate"]],
                      "curves": [{k: r[k] for k in CURVE_KEYS if k in r} for r in steps]}
    print(format_table(table))
    png = plot_training_curves(curves, Path(args.out).with_suffix(".png"))
    out = {
        "dataset": args.dataset, "sft": args.sft, "rl_config": asdict(config),
        "rollouts_per_request": args.rollouts, "riser_group": args.group,
        "test_sample": {"requests": args.test_requests, "seed": 0, "beam": 20},
        "test": table, "runs": runs, "png": str(png),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
