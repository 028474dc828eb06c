"""Play RecGen episodes with a uniformly random *valid* token policy, single env and vector env.

    python examples/random_agent.py --env RecGen-Synthetic-v0 --episodes 200
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import recgym  # noqa: F401  (registers the RecGen ids)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="RecGen-Synthetic-v0")
    parser.add_argument("--representation", default="sid", choices=["title", "sid"])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--num-items", type=int, default=3000, help="synthetic catalogue size")
    args = parser.parse_args(argv)
    kwargs = {"representation": args.representation,
              "dataset_kwargs": {"num_items": args.num_items, "num_users": args.num_items}}
    rng = np.random.default_rng(0)

    # One env, the Gymnasium way: sample among the tokens info["action_mask"] allows.
    env = gym.make(args.env, render_mode="ansi", **kwargs)
    hits = 0
    for episode in range(args.episodes):
        obs, info = env.reset(seed=episode)
        done = False
        while not done:
            action = rng.choice(np.flatnonzero(info["action_mask"]))
            obs, reward, done, truncated, info = env.step(action)
        hits += info["hit"]
    print(env.render())

    # The batched way: one vector env, masks from the shared prefix tree, groups of 8 per request.
    envs = gym.make_vec(args.env, num_envs=64, vectorization_mode="vector_entry_point",
                        autoreset_mode="disabled", dense_masks=False, **kwargs)
    tree = envs.unwrapped.tree
    obs, info = envs.reset(seed=0, options={"group_size": 8})
    done = np.zeros(64, bool)
    while not done.all():
        actions = tree.sample_tokens(np.where(done, tree.root, info["state"]), rng)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        done |= terminated
    result = {"single_env_hit_rate": hits / args.episodes, "vector_env_hit_rate": float(info["hit"].mean())}
    print(result)
    return result


if __name__ == "__main__":
    main()
