"""Data parallelism on CPU: 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads.

Same work in both: the synthetic env, the ``tiny`` model, RISER steps on the same global batch of
``--requests`` requests (``--minibatches`` optimizer steps each; under torchrun each rank rolls out
its share of every minibatch, :mod:`agents.distributed`), then an evaluation of ``--eval-requests``
test requests by constrained beam search (sharded by whole batches). Reports seconds per RL step
and per evaluated request, and writes ``benchmarks/results/distributed.json``.

    python benchmarks/bench_distributed.py [--steps 4] [--requests 16] [--eval-requests 96]

On a GPU node the same script measures N processes x 1 GPU by ``--nproc N`` (each rank takes
``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import distributed as dist  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One configuration: evaluate the starting policy, then ``--steps`` RL steps after a warm-up step."""
    from agents.configs import RLConfig
    from agents.evaluate import evaluate
    from agents.learners import make_learner
    from agents.policy import LLMPolicy
    from agents.rl import train_rl
    from recgym.envs import RecGenTask

    torch.set_num_threads(args.threads)
    dist.init()
    kwargs = {"num_items": 300, "num_users": 400}
    train = RecGenTask("synthetic", split="train", representation="sid", vocab_size=400,
                       dataset_kwargs=kwargs)
    test = RecGenTask("synthetic", split="test", tokenizer=train.items, dataset_kwargs=kwargs)
    policy = LLMPolicy.from_config("tiny", train.items, seed=0, device=args.device)
    learner = make_learner("riser", group_size=8, oversample=10)

    def rl(steps: int) -> float:
        cfg = RLConfig(steps=steps, requests_per_step=args.requests, minibatches=args.minibatches, lr=1e-4,
                       eval_every=0, progress=False, env_id="RecGen-Synthetic-v0")
        dist.barrier()
        tick = time.perf_counter()
        train_rl(policy, learner, train, None, cfg)
        dist.barrier()
        return time.perf_counter() - tick

    dist.barrier()
    tick = time.perf_counter()  # first, on the starting weights: every configuration scores the same
    metrics = evaluate(policy, test, beam=args.beam, max_requests=args.eval_requests, batch_size=16,
                       progress=False)
    dist.barrier()
    eval_seconds = time.perf_counter() - tick
    rl(1)  # warm-up: allocations, first forward
    rl_seconds = rl(args.steps)
    if dist.is_main():
        Path(args.worker).write_text(json.dumps({
            "processes": dist.world_size(), "threads_per_process": args.threads,
            "rl_seconds_per_step": round(rl_seconds / args.steps, 4),
            "eval_seconds_per_request": round(eval_seconds / args.eval_requests, 5),
            "eval_HR@10": metrics["HR@10"]}))
    dist.cleanup()


def launch(args: argparse.Namespace, nproc: int, threads: int) -> dict:
    """Run :func:`worker` in ``nproc`` processes of ``threads`` threads; its rank 0's numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        script = [str(Path(__file__).resolve()), "--worker", str(out), "--threads", str(threads),
                  *sys.argv[1:]]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                *script] if nproc > 1 else [sys.executable, *script])
        env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCH_VARS}
        env.update(OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)
        return json.loads(out.read_text())


def main() -> None:
    """Both configurations, then ``benchmarks/results/distributed.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed RL steps (after one warm-up step)")
    parser.add_argument("--requests", type=int, default=16, help="requests per RL step (the global batch)")
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--eval-requests", type=int, default=96)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    runs = {"1 process": launch(args, 1, args.nproc), f"{args.nproc} processes": launch(args, args.nproc, 1)}
    one, many = runs["1 process"], runs[f"{args.nproc} processes"]
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "device": args.device},
        "settings": {k: getattr(args, k)
                     for k in ("steps", "requests", "minibatches", "eval_requests", "beam", "nproc")},
        "runs": runs,
        "speedup": {"rl_step": round(one["rl_seconds_per_step"] / many["rl_seconds_per_step"], 3),
                    "eval_request": round(one["eval_seconds_per_request"]
                                          / many["eval_seconds_per_request"], 3)},
        "same_eval_metrics": one["eval_HR@10"] == many["eval_HR@10"],  # exact sharded evaluation
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
