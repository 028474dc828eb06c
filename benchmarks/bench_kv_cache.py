"""Decoding KV caches side by side, on the same policy and prompts (``agents.model.kvcache``).

Three arms of ``LLMPolicy.rollout`` and ``LLMPolicy.beam_search``:

* ``shared_prefix`` (the default): each prompt's keys and values once, attended per prompt; each
  row's own tokens written in place into reserved room;
* ``reserved``: every row holds a copy of its prompt (``policy.shared_prefix = False``), tokens
  written in place;
* ``concat``: Hugging Face's ``DynamicCache``, a copy of the prompt per row and the whole cache
  concatenated (copied) at every step: what the policy did before.

The arms run interleaved (A, B, C, A, B, C, ...) so that a busy machine slows them alike, and must
give the same tokens. The rollout's achieved FLOP/s is reported against the float32 GEMM peak that
the same script measures (``bench_policy.gemm_peak``).

Writes ``benchmarks/results/kv-cache[-MODEL].json``.

    python benchmarks/bench_kv_cache.py --model smollm2-135m [--requests 4] [--group 16] [--beam 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from bench_policy import gemm_peak, rollout_flops, title_policy

import agents.model.policy
from agents.model.policy import make_rollout_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="office-d3")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", help="a real causal LM (e.g. smollm2-135m) instead of the preset")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--beam-requests", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/kv-cache[-MODEL].json")
    args = parser.parse_args()
    suffix = f"-{Path(args.model).name}" if args.model else ""
    out = Path(args.out or f"benchmarks/results/kv-cache{suffix}.json")
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    task, policy = title_policy(args.dataset, args.model, args.preset)
    policy.model.eval()
    envs = make_rollout_env(task, args.requests * args.group)
    rows = np.arange(args.requests)
    prompts, lens = task.prompt_tokens(np.arange(args.beam_requests))

    def rollout():
        return policy.rollout(envs, group_size=args.group, rows=rows,
                              generator=torch.Generator().manual_seed(0), seed=0)

    def beams():
        return policy.beam_search(prompts, lens, width=args.beam)

    def arm(shared: bool, concat: bool = False):
        def run(fn):
            policy.shared_prefix = shared
            if not concat:
                return fn()
            no_room = mock.patch.object(agents.model.policy, "reserved_cache", lambda room: None)
            with no_room:  # the model's own
                return fn()
        return run

    arms = {"shared_prefix": arm(True), "reserved": arm(False), "concat": arm(False, concat=True)}
    outputs = {name: (run(rollout), run(beams)) for name, run in arms.items()}  # warm-up, and outputs
    phases = ("rollout", "beam")
    seconds: dict[str, dict[str, list[float]]] = {phase: {a: [] for a in arms} for phase in phases}
    for _ in range(args.repeats):
        for name, run in arms.items():
            for phase, fn in (("rollout", rollout), ("beam", beams)):
                start = time.perf_counter()
                run(fn)
                seconds[phase][name].append(time.perf_counter() - start)
    median = {phase: {a: float(np.median(t)) for a, t in arms_t.items()} for phase, arms_t in seconds.items()}
    ro = outputs["shared_prefix"][0]
    flops = rollout_flops(policy, ro.prompt_mask.sum(dim=1).numpy(), ro.mask.sum(dim=1).numpy().astype(float))
    peak = gemm_peak(threads)
    result = {
        "dataset": args.dataset, "model": args.model or args.preset, "requests": args.requests,
        "group": args.group, "beam": args.beam, "beam_requests": args.beam_requests, "repeats": args.repeats,
        "prompt_tokens_mean": float(ro.prompt_mask.sum(dim=1).float().mean()),
        "seconds": median, "all_seconds": seconds,
        "speedup_over_concat": {phase: {a: m["concat"] / m[a] for a in arms} for phase, m in median.items()},
        "same_rollout_tokens": all(torch.equal(ro.tokens, o[0].tokens) for o in outputs.values()),
        "same_beams": all(np.array_equal(outputs["concat"][1][0], o[1][0]) for o in outputs.values()),
        "gemm_peak_flops": peak,
        "rollout_model_flops": flops,
        "rollout_fraction_of_gemm_peak": {a: flops / m / peak for a, m in median["rollout"].items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": threads},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = ("seconds", "speedup_over_concat", "same_rollout_tokens", "same_beams",
             "rollout_fraction_of_gemm_peak")
    print(json.dumps({k: result[k] for k in shown}, indent=2))


if __name__ == "__main__":
    main()
