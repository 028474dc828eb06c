"""Vector-env throughput: the natively batched RecGenVectorEnv against a loop over single RecGenEnvs.

Both play the same requests with random valid actions (drawn from the tree), in the same run; the
vector env without dense masks, with a fresh dense mask per step, and with one reused mask array
(``dense_masks="reuse"``).
Writes ``benchmarks/results/env-<dataset>.json``.

    python benchmarks/bench_env.py [--dataset synthetic|office-d3] [--num-envs 64] [--episodes 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from recgym.envs import RecGenEnv, RecGenTask
from recgym.envs.vector import RecGenVectorEnv

MODES = (False, True, "reuse")  # dense_masks: none, a fresh array per step, one array rewritten in place


def run_vector(task: RecGenTask, num_envs: int, episodes: int, dense: bool | str, seed: int) -> dict:
    envs = RecGenVectorEnv(num_envs, task, autoreset_mode="disabled", dense_masks=dense)
    rng = np.random.default_rng(seed)
    steps = done_eps = 0
    start = time.perf_counter()
    while done_eps < episodes:
        _, info = envs.reset(seed=int(rng.integers(1 << 31)))
        done = np.zeros(num_envs, bool)
        while not done.all():
            actions = envs.tree.sample_tokens(np.where(done, 0, info["state"]), rng)
            _, _, terminated, _, info = envs.step(actions)
            steps += int(info["active"].sum())
            done |= terminated
        done_eps += num_envs
    elapsed = time.perf_counter() - start
    return {"env_steps_per_s": steps / elapsed, "episodes_per_s": done_eps / elapsed, "seconds": elapsed}


def run_single_loop(task: RecGenTask, num_envs: int, episodes: int, seed: int) -> dict:
    envs = [RecGenEnv(task) for _ in range(num_envs)]
    rng = np.random.default_rng(seed)
    steps = done_eps = 0
    start = time.perf_counter()
    while done_eps < episodes:
        infos = [env.reset(seed=int(rng.integers(1 << 31)))[1] for env in envs]
        done = [False] * num_envs
        while not all(done):
            for i, env in enumerate(envs):
                if done[i]:
                    continue
                state = env.unwrapped._state
                action = int(env.tree.sample_tokens(np.array([state]), rng)[0])
                _, _, done[i], _, infos[i] = env.step(action)
                steps += 1
        done_eps += num_envs
    elapsed = time.perf_counter() - start
    return {"env_steps_per_s": steps / elapsed, "episodes_per_s": done_eps / elapsed, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--representation", default="title")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=2048)
    parser.add_argument("--out", help="default: benchmarks/results/env-<dataset>.json")
    args = parser.parse_args()
    task = RecGenTask(args.dataset, representation=args.representation, split="test")
    results = {
        "dataset": args.dataset, "representation": args.representation, "num_envs": args.num_envs,
        "episodes": args.episodes, "vocab_size": task.vocab_size, "tree_nodes": task.tree.num_nodes,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "numpy": np.__version__},
    }
    for dense in MODES:
        task.prompt_tokens(np.arange(task.num_requests))  # warm the prompt cache for all runs alike
        results[f"vector_dense_masks={dense}"] = run_vector(task, args.num_envs, args.episodes, dense, 0)
    results["single_env_loop"] = run_single_loop(task, args.num_envs, args.episodes, 0)
    loop = results["single_env_loop"]["env_steps_per_s"]
    for dense in MODES:
        results[f"speedup_vector_dense_masks={dense}_vs_loop"] = (
            results[f"vector_dense_masks={dense}"]["env_steps_per_s"] / loop)
    out = Path(args.out or f"benchmarks/results/env-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
