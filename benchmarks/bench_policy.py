"""Constrained group rollouts and beam search: LLMPolicy against Hugging Face ``generate``.

Same model (the ``small`` preset with a 151,936-row output layer, as Qwen2), same prompts (D3
title prompts over a real catalogue, ~200 tokens), same run:

  (a) R requests x n rollouts: ``LLMPolicy.rollout`` through the vector env (sparse head, one
      prefill per request) against ``generate(num_return_sequences=n, do_sample=True,
      prefix_allowed_tokens_fn=...)`` over a dict trie (the ReRe / MiniOneRec / TRL way) and
      against unconstrained ``generate`` with the same settings;
  (b) beam search (width 20): ``LLMPolicy.beam_search`` against ``generate(num_beams=20,
      prefix_allowed_tokens_fn=...)``.

No Qwen2 tokenizer is available offline: the env's own BPE tokenizer writes the titles, and the
model's embedding is padded to 151,936 rows so that the output layer costs what Qwen2's does.
``--model`` runs the same comparison on a real pretrained LM (a folder, a hub name, or the offline
``smollm2-135m``), whose own tokenizer writes the titles. The rollouts' achieved FLOP/s (2 x the
non-embedding parameters per processed token, plus the sparse head) is reported beside the
float32 GEMM peak that the script measures on the same threads.
Writes ``benchmarks/results/policy.json`` (``policy-<model>.json`` with ``--model``).

    python benchmarks/bench_policy.py [--dataset office-d3] [--requests 16] [--group 16] [--model NAME]
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

from agents.model.policy import LLMPolicy, make_rollout_env
from recgym.envs import RecGenTask

QWEN2_VOCAB = 151_936


def title_policy(dataset: str, model: str | None, preset: str) -> tuple[RecGenTask, LLMPolicy]:
    """The test split's titles and a policy: a real LM (``model``, its own tokenizer writes the titles)
    or the offline ``preset`` with its output layer padded to Qwen2's 151,936 rows."""
    if model:
        from agents.build import build_policy, make_task

        task = make_task("RecGen-v0", "test", {"dataset": dataset, "representation": "title"},
                         tokenizer=model)
        return task, build_policy(task.items, model=model, device="cpu")
    task = RecGenTask(dataset, split="test", representation="title")
    return task, LLMPolicy.from_config(preset, task.items, seed=0, vocab_size=QWEN2_VOCAB, device="cpu")


def dict_trie(sequences: list[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Prefix tuple -> allowed next tokens: the reference implementations' constraint table."""
    table: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        seq = seq.tolist()
        for i in range(len(seq)):
            table.setdefault(tuple(seq[:i]), set()).add(seq[i])
    return {k: sorted(v) for k, v in table.items()}


def reference_generate(policy: LLMPolicy, prompts: torch.Tensor, mask: torch.Tensor, *, n: int,
                       constrained: bool, beams: int = 0) -> torch.Tensor:
    items = policy.items
    trie = dict_trie(items.sequences) if constrained else None
    start = prompts.shape[1]

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        # Per row and per step, in Python: the reference's cost centre.
        return trie.get(tuple(input_ids[start:].tolist()), [items.eos_token_id])

    kwargs = dict(max_new_tokens=policy.tree.max_depth, eos_token_id=items.eos_token_id,
                  pad_token_id=items.pad_token_id, top_k=0, top_p=1.0, temperature=1.0)
    if beams:
        kwargs.update(num_beams=beams, num_return_sequences=beams, do_sample=False, early_stopping=True)
    else:
        kwargs.update(num_return_sequences=n, do_sample=True)
    if constrained:
        kwargs["prefix_allowed_tokens_fn"] = allowed
    return policy.model.generate(input_ids=prompts, attention_mask=mask, **kwargs)


def gemm_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Float32 GEMM FLOP/s of this machine on ``threads`` threads: the best of ``repeats`` n^3 matmuls."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(timed_once(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best


def timed_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rollout_flops(policy: LLMPolicy, prompt_len: np.ndarray, response_len: np.ndarray) -> float:
    """Model FLOPs of one group rollout pass: each prompt once, each sampled token once.

    2 x non-embedding parameters per processed token (the decoder blocks), plus 2 x hidden x 64 per
    generated token for the sparse head (its allowed rows; a bound: few titles branch wider);
    attention's sequence-length term is left out (small at these lengths), so this is a lower bound.
    """
    embed = policy.model.get_input_embeddings().weight
    blocks = sum(p.numel() for p in policy.model.parameters()) - embed.numel()
    if not policy.model.config.tie_word_embeddings:
        blocks -= policy.model.get_output_embeddings().weight.numel()
    tokens = float(prompt_len.sum()) + float(response_len.sum())
    return 2.0 * blocks * tokens + 2.0 * embed.shape[1] * 64 * float(response_len.sum())


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection are not what we compare
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare(requests: int, repeats: int, runs: dict) -> dict:
    """Median seconds of each run, requests/s, and recgym's speed-up over each other run."""
    seconds = {name: timed(fn, repeats) for name, fn in runs.items()}
    result = {"requests": requests, "seconds": seconds,
              "requests_per_s": {name: requests / t for name, t in seconds.items()},
              "recgym_speedup": {name: t / seconds["recgym"] for name, t in seconds.items()
                                 if name != "recgym"}}
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="office-d3")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", help="a real causal LM instead of the padded preset (e.g. smollm2-135m)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--beam-requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/policy[-MODEL].json")
    args = parser.parse_args()
    suffix = f"-{Path(args.model).name}" if args.model else ""
    args.out = args.out or f"benchmarks/results/policy{suffix}.json"
    torch.manual_seed(0)
    task, policy = title_policy(args.dataset, args.model, args.preset)
    policy.model.eval()
    rows = np.arange(args.requests)
    prompt_ids, prompt_len = task.prompt_tokens(rows)
    left, mask = policy.left_pad(prompt_ids, prompt_len)
    envs = make_rollout_env(task, args.requests * args.group)
    resp_len = [len(s) for s in task.items.sequences]
    out: dict = {
        "dataset": args.dataset, "model": args.model or f"{args.preset} (padded to Qwen2's vocabulary)",
        "model_vocab": policy.model.get_input_embeddings().weight.shape[0],
        "tokenizer_vocab": task.vocab_size, "items": task.dataset.catalogue.num_items,
        "prompt_tokens_mean": float(prompt_len.mean()), "response_tokens_mean": float(np.mean(resp_len)),
        "requests": args.requests, "group": args.group, "beam": args.beam,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    threads = torch.get_num_threads()
    out["gemm_peak_flops"] = gemm_peak(threads)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        sampled = policy.rollout(envs, group_size=args.group, rows=rows, generator=gen)
        lengths = np.asarray(sampled.lengths.cpu() if hasattr(sampled, "lengths") else [], dtype=float)
        out["rollouts"] = compare(args.requests, args.repeats, {
            "recgym": lambda: policy.rollout(envs, group_size=args.group, rows=rows, generator=gen),
            "hf_constrained": lambda: reference_generate(policy, left, mask, n=args.group, constrained=True),
            "hf_unconstrained": lambda: reference_generate(policy, left, mask, n=args.group,
                                                           constrained=False),
        })
        if lengths.size:  # achieved FLOP/s of recgym's rollout against the measured GEMM peak
            flops = rollout_flops(policy, prompt_len, lengths)
            achieved = flops / out["rollouts"]["seconds"]["recgym"]
            out["rollouts"]["model_flops"] = flops
            out["rollouts"]["achieved_flops"] = achieved
            out["rollouts"]["fraction_of_gemm_peak"] = achieved / out["gemm_peak_flops"]
        b = args.beam_requests
        out["beam_search"] = compare(b, args.repeats, {
            "recgym": lambda: policy.beam_search(prompt_ids[:b], prompt_len[:b], width=args.beam),
            "hf_constrained": lambda: reference_generate(policy, left[:b], mask[:b], n=1, constrained=True,
                                                         beams=args.beam),
        })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
