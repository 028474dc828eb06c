"""Train a tiny model with TRL's own ``GRPOTrainer`` on a recgym env (see ``agents.integrations.trl``).

The env's prompts become a ``datasets.Dataset``, its reward a TRL reward function, and its prefix tree
constrains TRL's sampling (``--free`` turns the constraint off and reports the invalid-output rate).
Runs offline on a CPU in seconds::

    pip install -e ".[trl]"
    python examples/trl_grpo.py --steps 2 --out /tmp/trl-grpo

The model here is a tiny Qwen2 built from a config (``LLMPolicy.from_config("tiny", ...)``); any causal LM
whose tokenizer is ``task.items`` works the same way.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def build(args: argparse.Namespace) -> dict[str, Any]:
    from trl import GRPOConfig

    from agents.integrations.trl import ConstrainedGRPOTrainer, RecGymReward, prompt_dataset
    from agents.model.policy import LLMPolicy
    from recgym.data import make_synthetic
    from recgym.envs import RecGenTask

    data = make_synthetic(num_items=args.num_items, num_users=args.num_users, num_categories=4,
                          clusters_per_category=3, seed=args.seed)
    task = RecGenTask(data, split="train", representation="sid", vocab_size=400, reward=args.reward)
    policy = LLMPolicy.from_config("tiny", task.items, seed=args.seed, device="cpu")
    config = GRPOConfig(
        output_dir=args.out, max_steps=args.steps, learning_rate=1e-4, seed=args.seed,
        num_generations=args.group_size, per_device_train_batch_size=args.group_size * 2,
        max_completion_length=task.max_response_len, temperature=1.0,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        log_completions=False, dataloader_num_workers=0,
    )
    reward = RecGymReward(task, num_generations=args.group_size)
    trainer = ConstrainedGRPOTrainer(
        model=policy.model, processing_class=task.items.tokenizer, reward_funcs=reward,
        train_dataset=prompt_dataset(task, range(args.requests)), args=config,
        tree=None if args.free else task.tree,
    )
    return {"task": task, "policy": policy, "reward": reward, "trainer": trainer}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="GRPO optimizer steps")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (num_generations)")
    parser.add_argument("--requests", type=int, default=64, help="train requests in the prompt dataset")
    parser.add_argument("--reward", default="hit", help="hit, ranking or rank_discounted")
    parser.add_argument("--free", action="store_true", help="no prefix-tree constraint on generation")
    parser.add_argument("--num-items", type=int, default=60)
    parser.add_argument("--num-users", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="trl-grpo-out", help="TRL's output_dir")
    args = parser.parse_args(argv)
    built = build(args)
    built["trainer"].train()
    logs = [r for r in built["trainer"].state.log_history if "reward" in r]
    summary = {"steps": built["trainer"].state.global_step,
               "reward": [r["reward"] for r in logs],
               "invalid_rate": [r.get("recgym/invalid_rate") for r in logs]}
    print(json.dumps(summary))
    return built


if __name__ == "__main__":
    main()
