"""MiniRec on real Games (LC-Rec, SIDs): RL on a 10% MiniRec subset vs a 10% random subset vs the full pool.

Every arm starts from the same SFT policy (``--sft``) and trains the same learner with the same
settings for the same number of epochs over its requests (``--epochs``): the full pool, a MiniRec
subset (proxy = the SFT policy, N rollouts per request, curriculum order) or a seeded random
subset of the same size. "Full" is a seeded sample of ``--pool`` training requests: the whole
301k-request train split is out of reach on 2 CPU cores (one epoch of GRPO would take ~9 hours).
Test HR/NDCG@{1,3,5,10,20} (final weights, beam search) on a seeded sample of test requests, and
the test reward: the mean hit rate of ``--test-rollouts`` sampled responses per test request (the
quantity RL maximises; beam HR@10 can fall while it rises, as RL sharpens the distribution). Wall
time is selection + RL. Writes ``benchmarks/results/minirec-games.json`` and ``.png``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_minirec_games.py \
        --sft runs/bench-cpu/sft/final --set max_history=5 --pool 2560 --fraction 0.1 \
        --random-seeds 0,1,2 --test-requests 1000 --test-rollouts 16

(``runs/bench-cpu/sft/final``: the SFT policy of the ``cpu`` bench preset, README "Results".)
``--env`` and ``--set KEY=VALUE`` (task options, as in ``recgym train``) run the same study on
another env, e.g. the ``ci`` bench preset's synthetic SID env, where the SFT policy hits often
enough for RL to have a signal:

    recgym bench --preset ci --agents sft --out runs/ci-sft
    python benchmarks/bench_minirec_games.py --env RecGen-Synthetic-v0 --set representation=sid \
        --set vocab_size=400 --set 'dataset_kwargs={"num_items":300,"num_users":400}' \
        --sft runs/ci-sft/sft/final --pool 2560 --fraction 0.1 --group-size 8 --lr 3e-4 --epochs 3 \
        --random-seeds 0,1,2 --test-requests 500 --test-rollouts 64 --run-dir runs/minirec-synthetic \
        --out benchmarks/results/minirec-synthetic.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from agents.bench.report import machine_info  # noqa: E402
from agents.build import make_task  # noqa: E402
from agents.cli import parse_key_values  # noqa: E402
from agents.learners import make_learner  # noqa: E402
from agents.minirec import CurriculumSampler, proxy_rollouts, run_selection  # noqa: E402
from agents.model.policy import LLMPolicy  # noqa: E402
from agents.training.evaluate import evaluate, select_rows  # noqa: E402
from agents.training.rl import EpochSampler, RLConfig, train_rl  # noqa: E402
from agents.training.tracking import write_atomically  # noqa: E402
from recgym.metrics import format_table  # noqa: E402

METRICS = ("HR@10", "NDCG@10", "reward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="the SFT policy folder every arm starts from")
    parser.add_argument("--env", default="RecGen-Games-v0", help="a registered RecGen env id")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="task option, as in SFT, e.g. --set max_history=5 (repeatable)")
    parser.add_argument("--pool", type=int, default=2560, help="the 'full' set: a seeded sample of train")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--learner", default="grpo")
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--requests-per-step", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rollouts", type=int, default=4, help="MiniRec's N proxy rollouts per request")
    parser.add_argument("--variant", default="hidden", choices=["hidden", "params"])
    parser.add_argument("--random-seeds", default="0", help="random subsets to draw, e.g. 0,1,2")
    parser.add_argument("--test-requests", type=int, default=2000)
    parser.add_argument("--test-rollouts", type=int, default=8, help="samples per test request (test reward)")
    parser.add_argument("--run-dir", default="runs/minirec-games")
    parser.add_argument("--out", default="benchmarks/results/minirec-games.json")
    args = parser.parse_args()

    start = LLMPolicy.from_pretrained(args.sft)
    task = parse_key_values(args.set)
    train = make_task(args.env, "train", task, tokenizer=start.items)
    test = make_task(args.env, "test", task, tokenizer=start.items)
    pool = select_rows(train.num_requests, args.pool, seed=0)
    size = int(round(args.fraction * len(pool)))

    test_rows = select_rows(test.num_requests, args.test_requests, seed=0)

    def test_metrics(policy: LLMPolicy) -> dict[str, float]:
        metrics = evaluate(policy, test, beam=20, max_requests=args.test_requests, seed=0)
        sampled = proxy_rollouts(policy, test, test_rows, rollouts=args.test_rollouts, seed=1)
        return {**metrics, "reward": float(sampled.rewards.mean())}

    def run_rl(name: str, sampler: EpochSampler | CurriculumSampler, requests: int) -> dict:
        steps = args.epochs * requests // args.requests_per_step
        config = RLConfig(steps=steps, requests_per_step=args.requests_per_step, lr=args.lr, eval_every=0)
        policy = LLMPolicy.from_pretrained(args.sft)
        run = Path(args.run_dir) / name
        shutil.rmtree(run, ignore_errors=True)  # a fresh run: train_rl would resume a finished one
        tick = time.perf_counter()
        learner = make_learner(args.learner, group_size=args.group_size)
        summary = train_rl(policy, learner, train, None, config, run_dir=run, sampler=sampler)
        seconds = time.perf_counter() - tick
        return {"rl_seconds": round(seconds, 1), "steps": steps, "rollouts": summary["rollouts"],
                "test": test_metrics(policy), "rl_config": asdict(config)}

    arms: dict[str, dict] = {"sft": {"test": test_metrics(start), "rl_seconds": 0.0,
                                     "selection_seconds": 0.0}}
    arms["full"] = {**run_rl("full", EpochSampler(pool, args.requests_per_step, seed=0), len(pool)),
                    "selection_seconds": 0.0, "requests": len(pool)}
    selection = run_selection(start, train, pool, "minirec", size, rollouts=args.rollouts,
                              variant=args.variant)
    order = np.asarray(selection["order"])
    arms["minirec"] = {**run_rl("minirec", CurriculumSampler(order, args.requests_per_step), len(order)),
                       "selection_seconds": selection["seconds"]["total"], "requests": len(order),
                       "selection": {k: selection[k] for k in ("seconds", "stats", "config", "curriculum")}}
    for seed in [int(s) for s in args.random_seeds.split(",")]:
        rows = np.random.default_rng(seed).choice(pool, size, replace=False)
        sampler = EpochSampler(rows, args.requests_per_step, seed=0)
        arms[f"random-{seed}"] = {**run_rl(f"random-{seed}", sampler, size), "selection_seconds": 0.0,
                                  "requests": size}
    for arm in arms.values():
        arm["wall_seconds"] = round(arm["rl_seconds"] + arm["selection_seconds"], 1)

    base = arms["sft"]["test"]
    gains = {name: {k: arm["test"][k] - base[k] for k in METRICS} for name, arm in arms.items()}
    randoms = [name for name in arms if name.startswith("random")]
    summary = {
        "gain_over_sft": gains,
        # A share of the full-data gain only means something when full data gained.
        "minirec_share_of_full_gain": {
            k: (gains["minirec"][k] / gains["full"][k] if gains["full"][k] > 0 else None)
            for k in METRICS},
        "minirec_minus_random_mean": {
            k: arms["minirec"]["test"][k] - float(np.mean([arms[n]["test"][k] for n in randoms]))
            for k in METRICS},
        "minirec_time_share_of_full": round(
            arms["minirec"]["wall_seconds"] / arms["full"]["wall_seconds"], 3),
    }
    print(format_table({name: arm["test"] for name, arm in arms.items()}))
    print(json.dumps(summary, indent=2))
    png = plot(arms, Path(args.out).with_suffix(".png"))
    out = {
        "env": args.env, "task": task, "dataset": train.dataset.name, "sft": args.sft,
        "learner": make_learner(args.learner, group_size=args.group_size).describe(),
        "pool": len(pool), "subset": size, "epochs": args.epochs,
        "test_sample": {"requests": len(test_rows), "seed": 0, "beam": 20,
                        "reward_rollouts": args.test_rollouts},
        "lr": args.lr,
        "arms": arms, "summary": summary, "png": str(png),
        "machine": machine_info("cpu"),
    }
    write_atomically(Path(args.out), json.dumps(out, indent=2))
    print(f"wrote {args.out} and {png}")


def plot(arms: dict[str, dict], path: Path) -> Path:
    """Test HR@10, NDCG@10 and reward per arm, and wall time (selection + RL) per arm."""
    names = list(arms)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, metric in zip(axes[:3], METRICS):
        ax.bar(names, [arms[n]["test"][metric] for n in names], color="tab:blue")
        ax.axhline(arms["sft"]["test"][metric], color="gray", ls="--", lw=1, label="SFT start")
        ax.set_title(f"test {metric}" if metric != "reward" else "test reward (sampled hit rate)")
        ax.legend(fontsize=8)
    axes[3].bar(names, [arms[n]["rl_seconds"] for n in names], label="RL", color="tab:orange")
    axes[3].bar(names, [arms[n]["selection_seconds"] for n in names],
                bottom=[arms[n]["rl_seconds"] for n in names], label="selection", color="tab:green")
    axes[3].set_title("wall time (s)")
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
