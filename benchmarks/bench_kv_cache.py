"""Decoding with a reserved KV cache against a concatenating one, on the same policy and prompts.

``LLMPolicy.rollout`` and ``LLMPolicy.beam_search`` decode into ``agents.policy.reserved_cache``:
each layer's keys and values live in a buffer with room for the longest item, and a decoding step
writes its token in place. Hugging Face's ``DynamicCache`` instead concatenates at every step, i.e.
copies the whole cache once per generated token. The two arms run interleaved (A, B, A, B, ...)
so that a busy machine slows both alike; the rollout's achieved FLOP/s is reported against the
float32 GEMM peak measured by the same script (``bench_policy.gemm_peak``).

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

import agents.policy
from agents.policy import make_rollout_env


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

    concat = mock.patch.object(agents.policy, "reserved_cache", lambda room: None)  # the model's own cache
    arms = {"reserved": lambda fn: fn(), "concat": lambda fn: _under(concat, fn)}
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
    ro = outputs["reserved"][0]
    flops = rollout_flops(policy, ro.prompt_mask.sum(dim=1).numpy(), ro.mask.sum(dim=1).numpy().astype(float))
    peak = gemm_peak(threads)
    result = {
        "dataset": args.dataset, "model": args.model or args.preset, "requests": args.requests,
        "group": args.group, "beam": args.beam, "beam_requests": args.beam_requests, "repeats": args.repeats,
        "prompt_tokens_mean": float(ro.prompt_mask.sum(dim=1).float().mean()),
        "seconds": median, "all_seconds": seconds,
        "speedup": {phase: m["concat"] / m["reserved"] for phase, m in median.items()},
        "same_rollout_tokens": bool(torch.equal(ro.tokens, outputs["concat"][0].tokens)),
        "same_beams": bool(np.array_equal(outputs["reserved"][1][0], outputs["concat"][1][0])),
        "gemm_peak_flops": peak,
        "rollout_model_flops": flops,
        "rollout_fraction_of_gemm_peak": {a: flops / m / peak for a, m in median["rollout"].items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": threads},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "speedup", "same_rollout_tokens", "same_beams",
                                             "rollout_fraction_of_gemm_peak")}, indent=2))


def _under(patch, fn):
    with patch:
        return fn()


if __name__ == "__main__":
    main()
