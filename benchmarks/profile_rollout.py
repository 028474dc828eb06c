"""Where a group rollout's time goes: ``torch.profiler`` over ``LLMPolicy.rollout`` on a real LM.

Self CPU time per operator, summed into what it is for: the matmuls (the model's arithmetic),
attention, KV-cache copies (concatenation, row selection, the shared prompt repeated per rollout),
the rest. The top operators are listed too. Then the ceiling the matmuls themselves set: the decoder
blocks' linear layers (the model's own weights) run alone at the same rollout's shapes, its prefill
and each decoding step's live rows, against this machine's float32 GEMM peak
(``bench_policy.gemm_peak``, large square matmuls). Writes
``benchmarks/results/profile-rollout[-MODEL].json``.

    python benchmarks/profile_rollout.py --model smollm2-135m [--requests 4] [--group 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from bench_policy import gemm_peak, title_policy
from torch.profiler import ProfilerActivity, profile

from agents.model.policy import make_rollout_env

# aten operators by what they do in a decoding step (self time; anything else is "other").
CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax",
                  "aten::_scaled_dot_product_attention_math", "aten::_safe_softmax"),
    "kv_copy": ("aten::cat", "aten::index_select", "aten::index", "aten::repeat_interleave",
                "aten::copy_", "aten::index_put_", "aten::slice_scatter"),
}


def block_linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights of the decoder blocks' linear layers (the output layer left out), in model order."""
    return [m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"]


def linear_pass(weights: list[torch.Tensor], rows: list[int]) -> tuple[float, float]:
    """(FLOPs, seconds) of running every weight once per entry of ``rows`` (that many input rows): the
    blocks' matmuls of a prefill and of each decoding step, alone, on the model's own tensors."""
    flops, seconds = 0.0, 0.0
    with torch.no_grad():
        for m in rows:
            inputs = {n_in: torch.randn(m, n_in) for n_in in {w.shape[1] for w in weights}}
            start = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            seconds += time.perf_counter() - start
            flops += sum(2.0 * m * w.shape[0] * w.shape[1] for w in weights)
    return flops, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="office-d3")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", help="a real causal LM (e.g. smollm2-135m) instead of the preset")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", help="default: benchmarks/results/profile-rollout[-MODEL].json")
    args = parser.parse_args()
    suffix = f"-{Path(args.model).name}" if args.model else ""
    out = Path(args.out or f"benchmarks/results/profile-rollout{suffix}.json")
    task, policy = title_policy(args.dataset, args.model, args.preset)
    policy.model.eval()
    envs = make_rollout_env(task, args.requests * args.group)
    rows = np.arange(args.requests)

    def rollout():
        return policy.rollout(envs, group_size=args.group, rows=rows,
                              generator=torch.Generator().manual_seed(0), seed=0)

    ro = rollout()  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rollout()
    wall = time.perf_counter() - start
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(ops.values())
    shares = {name: sum(ops.get(op, 0.0) for op in names) / total for name, names in CATEGORIES.items()}
    shares["other"] = 1.0 - sum(shares.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]
    # The same rollout's matmuls alone: the prefill (R padded prompts), then one pass per decoding
    # step at the rows still generating then (rows leave as their titles end).
    lens = ro.mask.sum(dim=1)
    steps = [int((lens > t).sum()) for t in range(1, int(lens.max()))]
    linear_flops, linear_seconds = linear_pass(block_linear_weights(policy.model),
                                               [int(ro.prompt_mask.numel()), *steps])
    peak = gemm_peak(torch.get_num_threads())
    result = {
        "dataset": args.dataset, "model": args.model or args.preset, "requests": args.requests,
        "group": args.group, "wall_seconds": wall, "profiled_self_seconds": total, "shares": shares,
        "top_ops": [{"op": op, "seconds": t, "share": t / total} for op, t in top],
        "gemm_peak_flops": peak, "decoding_step_rows": steps,
        "linear_only": {"flops": linear_flops, "seconds": linear_seconds,
                        "fraction_of_gemm_peak": linear_flops / linear_seconds / peak},
        "categories": {k: list(v) for k, v in CATEGORIES.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"wall_seconds": wall, "shares": shares, "top_ops": result["top_ops"][:8],
                      "linear_only": result["linear_only"]}, indent=2))


if __name__ == "__main__":
    main()
