"""Data parallelism on CPU: 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads.

Same work in both: the synthetic env, the ``tiny`` model, RISER steps on the same global batch of
``--requests`` requests (``--minibatches`` optimizer steps each; under torchrun each rank rolls out
its share of every minibatch, :mod:`agents.parallel.distributed`), then an evaluation of ``--eval-requests``
test requests by constrained beam search (sharded by whole batches). Reports seconds per RL step
and per evaluated request, and writes ``benchmarks/results/distributed.json``.

    python benchmarks/bench_distributed.py [--steps 4] [--requests 16] [--eval-requests 96]

On a GPU node the same script measures N processes x 1 GPU by ``--nproc N`` (each rank takes
``cuda:LOCAL_RANK``).

``--paper-estimate`` runs nothing distributed: it counts FLOPs per step (``FlopCounterMode``) of
SFT, the RL update, rollouts and beam search on two small Qwen2 models through the project's own code
paths, checks them against the analytic transformer formula, measures prompt / title token lengths on
real Games data, then applies the formula on paper to Qwen2-1.5B at the ``paper`` preset's sizes on
1-8 H100 / A100 GPUs (datasheet peaks and stated efficiencies: assumptions, no GPU is used). It writes
``benchmarks/results/distributed-paper-estimate.json`` and a README excerpt ``/tmp/paper_estimate_readme.md``.

    python benchmarks/bench_distributed.py --paper-estimate
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import distributed as dist  # noqa: E402
from agents.model.policy import BUCKET_PADDING, length_buckets  # noqa: E402  (the policy's default)


def worker(args: argparse.Namespace) -> None:
    """One configuration: evaluate the starting policy, then ``--steps`` RL steps after a warm-up step."""
    from agents.configs import RLConfig
    from agents.learners import make_learner
    from agents.model.policy import LLMPolicy
    from agents.training.evaluate import evaluate
    from agents.training.rl import train_rl
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
    parser.add_argument("--paper-estimate", action="store_true",
                        help="count FLOPs per step on small Qwen2 models and estimate Qwen2-1.5B on 1-8 GPUs "
                             "on paper (writes benchmarks/results/distributed-paper-estimate.json)")
    args = parser.parse_args()
    if args.paper_estimate:
        paper_estimate()
        return
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


# -- --paper-estimate: FLOPs per step counted here on small Qwen2 models, applied on paper to Qwen2-1.5B --
#
# Nothing below runs on a GPU. Three kinds of numbers, labelled so in the JSON:
#   measured  counted or timed on this machine (FlopCounterMode, token lengths of real data, CPU timings);
#   assumed   GPU datasheet peaks, efficiencies (MFU, bandwidth), the eager launch cost, the beam depth;
#   computed  the transformer FLOP formula (checked against the counts) applied at the paper's sizes.

PAPER_OUT = ROOT / "benchmarks" / "results" / "distributed-paper-estimate.json"
README_OUT = Path("/tmp/paper_estimate_readme.md")
GPU_COUNTS = (1, 2, 4, 8)
QWEN2_1_5B: dict[str, int] = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                              "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936}
# Small models whose FLOPs are counted (vocabularies padded so the output layer weighs as in an LLM).
CHECK_MODELS: dict[str, tuple[dict[str, int], int]] = {
    "small (d=256, 4 layers, V=8192)": ({"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                                         "num_attention_heads": 8, "num_key_value_heads": 4}, 8192),
    "medium (d=512, 6 layers, V=16384)": ({"hidden_size": 512, "intermediate_size": 1536,
                                           "num_hidden_layers": 6, "num_attention_heads": 8,
                                           "num_key_value_heads": 2}, 16384),
}
# Datasheet peaks (dense bf16, HBM, NVLink per direction): assumed; nothing here measures a GPU.
GPUS: dict[str, dict[str, float]] = {
    "H100 80GB SXM": {"bf16_flops": 989e12, "hbm_bytes_per_s": 3.35e12, "nvlink_bytes_per_s": 450e9},
    "A100 80GB SXM": {"bf16_flops": 312e12, "hbm_bytes_per_s": 2.0e12, "nvlink_bytes_per_s": 300e9},
}
ASSUMED: dict[str, Any] = {
    "mfu": 0.40,
    "mfu_note": "model-FLOPs utilisation of compute-bound work (training forward + backward, prefill, wide "
                "decode batches): 35-45% is what bf16 training of 1-2B models in PyTorch usually reaches on "
                "H100 / A100; assumed, not measured",
    "hbm_efficiency": 0.8,
    "nvlink_efficiency": 0.8,
    "launch_seconds_per_forward": 0.010,
    "launch_note": "CPU cost of one eager forward through 28 Hugging Face blocks (~40 kernels a block); a "
                   "forward cannot take less, and the rollout and beam loops synchronise at every token. "
                   "Public reports put HF eager Qwen2-1.5B at 40-66 tokens/s at batch 1 on one GPU (15-25 ms "
                   "a token through generate()); the dispatch cost per block measured on this CPU is under "
                   "measured.cpu. The 'roofline' estimates set it to 0 (CUDA graphs or a serving engine).",
    "grad_bytes_per_param": 2,
    "grad_note": "bf16 gradients (LLMPolicy runs in bf16 on CUDA); fp32 gradients double the all-reduce "
                 "(given too)",
    "allreduce_overlap": "none: agents.parallel.distributed.sum_gradients all-reduces flat buckets after "
                         "backward",
    "optimizer_bytes_per_param": 16,
    "optimizer_note": "AdamW + clipping read and write bf16 weights, gradients and both moments "
                      "(memory-bound); every rank updates every weight (no ZeRO) unless --fsdp",
    "failed_group_fraction": 1.0,
    "failed_note": "RISER adds the target as a SimPO 'chosen' row for each group without a hit; early in RL "
                   "nearly every group misses (an upper bound)",
    "beam_steps": "the p90 of the target titles' token counts, all 50 beams live at every step",
    "tokenizer": "SmolLM2-135M's byte-level BPE (49,152 tokens) stands in for Qwen2's (151,936 tokens; it "
                 "cannot be downloaded here); Qwen2's larger vocabulary gives somewhat fewer tokens",
    "sampled_lengths": "rollouts sample items whose title lengths follow the training targets' lengths",
    "activation_bytes": "bf16 activations kept for backward per token and block: 2 (6 d + 2 kv) + 8 ff bytes "
                        "(flash attention, no recomputation), plus fp32 logits x3 at target tokens",
    "fsdp": "FSDP2 all-gathers each block's weights in every forward and backward pass through it "
            "(group_logprobs passes twice: prompts, then responses) and reduce-scatters its gradients; "
            "rollouts run on blocks gathered once; given as time if not overlapped (FSDP2 prefetches)",
    "trials": 32,
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes the FLOP formula needs from a Qwen2 config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """From a ``Qwen2Config`` (or anything with its field names)."""
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_attention_heads, config.num_key_value_heads, config.vocab_size)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def linear_params(self) -> int:
        """Weights of the blocks' matmuls (q, k, v, o, gate, up, down): 2 FLOPs each per token."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        d = self.hidden
        return self.layers * (2 * d * q + 2 * d * kv + 3 * d * self.intermediate)

    @property
    def params(self) -> int:
        """All parameters: blocks (with q/k/v biases and norms), tied embeddings once, the final norm."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return (self.linear_params + self.layers * (q + 2 * kv + 2 * self.hidden) + self.vocab * self.hidden
                + self.hidden)

    @property
    def block_bytes(self) -> int:
        """bf16 bytes of the blocks' weights: what one decode step reads."""
        return 2 * (self.params - self.vocab * self.hidden - self.hidden)

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 K and V of one cached token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    @property
    def activation_bytes_per_token(self) -> int:
        """bf16 activations one token keeps for backward over all blocks (an estimate)."""
        kv = self.kv_heads * self.head_dim
        return self.layers * (2 * (6 * self.hidden + 2 * kv) + 8 * self.intermediate)


@dataclass
class Call:
    """One matmul-bearing call of the policy: a pass through the blocks or an output-layer product.

    ``kind``: ``trunk`` (``rows`` x ``new`` tokens attending over ``ctx`` keys), ``head_full`` or
    ``head_sparse`` (``rows`` hidden states times ``width`` output rows); ``train``: a backward follows.
    """

    kind: str
    rows: int
    new: int = 1
    ctx: int = 0
    width: int = 0
    train: bool = False


def call_flops(shape: ModelShape, call: Call) -> float:
    """The analytic count: forward 2 N_lin per token + 4 L d ctx per token (QK^T and AV over ``ctx``
    keys), head 2 d width per row; backward 2x the forward (activation and weight gradients)."""
    if call.kind == "trunk":
        tokens = call.rows * call.new
        flops = 2.0 * shape.linear_params * tokens + 4.0 * shape.layers * shape.hidden * tokens * call.ctx
    else:
        flops = 2.0 * shape.hidden * call.width * call.rows
    return flops * (3 if call.train else 1)


def total_flops(shape: ModelShape, calls: list[Call]) -> float:
    """The formula summed over ``calls``."""
    return float(sum(call_flops(shape, c) for c in calls))


# -- the code paths as lists of calls (the same functions for the small models and for Qwen2-1.5B) -----


def sft_calls(prompt_lens: np.ndarray, resp_lens: np.ndarray, vocab: int,
              padding: float | None = BUCKET_PADDING) -> list[Call]:
    """``sft_loss`` (``LLMPolicy.sequence_logprobs``): [prompt; target] rows in length buckets, each
    bucket one pass padded to its longest prompt and target; the full-vocabulary head at every real
    target token; then backward."""
    prompt_lens, resp_lens = np.asarray(prompt_lens), np.asarray(resp_lens)
    calls = []
    for rows in length_buckets(prompt_lens + resp_lens, padding):
        seq = int(prompt_lens[rows].max() + resp_lens[rows].max())
        calls.append(Call("trunk", len(rows), seq, seq, train=True))
    return [*calls, Call("head_full", int(resp_lens.sum()), width=vocab, train=True)]


def group_logprob_calls(prompt_lens: np.ndarray, resp_lens: np.ndarray, group_of: np.ndarray, vocab: int,
                        train: bool, padding: float | None = BUCKET_PADDING) -> list[Call]:
    """``LLMPolicy.group_logprobs``: each prompt once, in length buckets (its first token's head once
    per prompt), then the responses' tokens 1..T-1 in length buckets on the expanded prompt cache
    (trimmed to the bucket's longest prompt), the head at their real tokens.

    ``prompt_lens`` per group, ``resp_lens`` and ``group_of`` (its group) per response.
    """
    prompt_lens, resp_lens, group_of = np.asarray(prompt_lens), np.asarray(resp_lens), np.asarray(group_of)
    calls = []
    for rows in length_buckets(prompt_lens, padding):
        pad = int(prompt_lens[rows].max())
        calls.append(Call("trunk", len(rows), pad, pad, train=train))
    calls.append(Call("head_full", len(prompt_lens), width=vocab, train=train))
    for rows in length_buckets(resp_lens, padding):
        width, pad = int(resp_lens[rows].max()), int(prompt_lens[group_of[rows]].max())
        if width > 1:
            calls.append(Call("trunk", len(rows), width - 1, pad + width - 1, train=train))
    scored = int(np.maximum(resp_lens - 1, 0).sum())
    return [*calls, Call("head_full", scored, width=vocab, train=train)] if scored else calls


def rollout_calls(requests: int, prompt_pad: int, lens: np.ndarray, allowed: list[int]) -> list[Call]:
    """``LLMPolicy.rollout``: one prefill per request and its first token's sparse head once, then a
    decode step per token for the rows still generating (finished rows leave the cache).
    ``allowed[t]``: the size of the union of allowed tokens at step t (the sparse head's width)."""
    lens = np.asarray(lens)
    calls = [Call("trunk", requests, prompt_pad, prompt_pad), Call("head_sparse", requests, width=allowed[0])]
    for t in range(int(lens.max())):
        alive = int((lens > t + 1).sum())
        if alive == 0:
            break
        calls += [Call("trunk", alive, 1, prompt_pad + t + 1),
                  Call("head_sparse", alive, width=allowed[min(t + 1, len(allowed) - 1)])]
    return calls


def beam_calls(requests: int, prompt_pad: int, head_rows: list[int], decode_rows: list[int],
               allowed: list[int], vocab: int) -> list[Call]:
    """``LLMPolicy.beam_search`` (full scoring): a prefill per request, then at each step the sparse
    head and the full-vocabulary log-sum-exp on every beam row, and a decode step for the kept beams."""
    calls = [Call("trunk", requests, prompt_pad, prompt_pad)]
    for s, rows in enumerate(head_rows):
        calls += [Call("head_sparse", rows, width=allowed[min(s, len(allowed) - 1)]),
                  Call("head_full", rows, width=vocab)]
        if s < len(decode_rows):
            calls.append(Call("trunk", decode_rows[s], 1, prompt_pad + s + 1))
    return calls


# -- counting the real code paths ------------------------------------------------------------------------


@contextmanager
def record_calls(*policies: Any) -> Iterator[list[Call]]:
    """Wrap the policies' ``_forward``, ``full_logits`` and ``allowed_logits`` to list their calls."""
    calls: list[Call] = []
    for policy in policies:
        forward, full, sparse = policy._forward, policy.full_logits, policy.allowed_logits

        def _forward(input_ids: torch.Tensor, attention_mask: torch.Tensor, *args: Any, _f: Any = forward,
                     **kwargs: Any) -> Any:
            hidden, cache = _f(input_ids, attention_mask, *args, **kwargs)
            calls.append(Call("trunk", input_ids.shape[0], input_ids.shape[1], attention_mask.shape[1],
                              train=hidden.requires_grad))
            return hidden, cache

        def full_logits(hidden: torch.Tensor, _f: Any = full) -> torch.Tensor:
            out = _f(hidden)
            calls.append(Call("head_full", hidden.shape[0], width=out.shape[-1], train=out.requires_grad))
            return out

        def allowed_logits(hidden: torch.Tensor, states: torch.Tensor, *args: Any, _f: Any = sparse,
                           _p: Any = policy, **kwargs: Any) -> Any:
            tokens, logits = _f(hidden, states, *args, **kwargs)
            allowed, valid = _p.tables.allowed_padded(states)
            calls.append(Call("head_sparse", hidden.shape[0], width=int(torch.unique(allowed[valid]).numel()),
                              train=logits.requires_grad))
            return tokens, logits

        policy._forward, policy.full_logits, policy.allowed_logits = _forward, full_logits, allowed_logits
    try:
        yield calls
    finally:
        for policy in policies:
            for name in ("_forward", "full_logits", "allowed_logits"):
                policy.__dict__.pop(name, None)


def counted(policies: tuple[Any, ...], fn: Callable[[], Any]) -> tuple[Any, float, list[Call]]:
    """``fn()`` under ``FlopCounterMode``: its result, the counted FLOPs and the policies' calls."""
    from torch.utils.flop_counter import FlopCounterMode

    with record_calls(*policies) as calls, FlopCounterMode(display=False) as counter:
        out = fn()
    return out, float(counter.get_total_flops()), calls


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of one call."""
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def flop_check(sizes: dict[str, int], vocab: int, *, sft_rows: int = 8, requests: int = 4, group: int = 8,
               oversample: int = 10, beam: int = 20, beam_requests: int = 2) -> dict[str, Any]:
    """Count the FLOPs of SFT, rollouts, the RL update and beam search on a small Qwen2 and set them
    against the formula on the workload model (the functions applied to Qwen2-1.5B) and on the recorded
    shapes of every call; then time each path once more without the counter (the count was the warm-up).

    Attention runs eager here: ``FlopCounterMode`` has no formula for CPU SDPA, which would hide
    QK^T and AV; the eager path computes the same matmuls as plain ``bmm``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from agents.configs import RLConfig
    from agents.learners import make_learner
    from agents.model.policy import LLMPolicy, make_rollout_env
    from agents.training.rl import update
    from agents.training.sft import sft_loss
    from recgym.envs import RecGenTask

    task = RecGenTask("synthetic", split="train", representation="title", vocab_size=600,
                      dataset_kwargs={"num_items": 300, "num_users": 400})
    policy = LLMPolicy.from_config({**sizes, "attn_implementation": "eager"}, task.items, seed=0,
                                   vocab_size=vocab, device="cpu")
    if policy.model.config._attn_implementation != "eager":
        raise RuntimeError("could not switch the model to eager attention")
    shape = ModelShape.of(policy.model.config)
    reference = copy.deepcopy(policy)
    reference.model.requires_grad_(False)
    policy.model.train()
    learner = make_learner("riser", group_size=group, oversample=oversample)
    cfg = RLConfig(steps=1, requests_per_step=requests, minibatches=2, lr=1e-5, eval_every=0, progress=False,
                   env_id="RecGen-Synthetic-v0")
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    phases: dict[str, dict[str, Any]] = {}
    runs: dict[str, Callable[[], Any]] = {}

    def add(name: str, workload: str, flops: float, calls: list[Call], model: list[Call],
            fn: Callable[[], Any], per: int = 1) -> None:
        phases[name] = {"workload": workload, "per": per, "measured_flops": flops, "calls": calls,
                        "model": model}
        runs[name] = fn

    # (a) one SFT step: forward + backward of sft_rows [prompt; target] sequences
    rows = np.arange(sft_rows)

    def sft() -> None:
        loss, _ = sft_loss(policy, task, rows)
        loss.backward()

    with FlopCounterMode(display=False) as forward_only:
        sft_loss(policy, task, rows)
    _, flops, calls = counted((policy,), sft)
    _, prompt_len = task.prompt_tokens(rows)
    targets = policy.item_responses(task.examples.target[rows])
    model = sft_calls(prompt_len, (targets >= 0).sum(axis=1), shape.vocab)
    add("sft_step", f"{len(rows)} sequences, forward + backward", flops, calls, model, sft)
    phases["sft_step"]["measured_forward_flops"] = float(forward_only.get_total_flops())
    policy.model.zero_grad(set_to_none=True)

    # (c) rollouts: requests x oversample samples (prefill, then decode steps on the KV cache)
    envs = make_rollout_env(task, requests * oversample, "RecGen-Synthetic-v0")
    req = np.arange(requests)

    def rollout() -> Any:
        return policy.rollout(envs, group_size=oversample, rows=req, temperature=learner.temperature,
                              generator=torch.Generator().manual_seed(0), seed=0)

    ro, flops, calls = counted((policy,), rollout)
    model = rollout_calls(requests, ro.prompt_ids.shape[1], ro.mask.sum(dim=1).numpy(),
                          [c.width for c in calls if c.kind == "head_sparse"])
    add("rollout", f"{requests} requests x {oversample} samples", flops, calls, model, rollout)

    # (b) one RL update (RISER): reference + behaviour log-probs, then 2 minibatches forward + backward
    batch = learner.make_batch(policy, ro)

    def rl_update() -> None:
        with torch.no_grad():
            batch.ref_logp = learner.logprobs(reference, batch)[0]
            batch.old_logp = learner.logprobs(policy, batch)[0]
        update(policy, learner, batch.split(cfg.minibatches), optimizer, params, cfg, 0)

    _, flops, calls = counted((policy, reference), rl_update)
    model = 2 * group_logprob_calls(batch.prompt_mask.sum(dim=1).numpy(), batch.mask.sum(dim=1).numpy(),
                                    batch.group_index.numpy(), shape.vocab, False)
    for mb in batch.split(cfg.minibatches):
        failed = ~mb.hits.reshape(mb.num_groups, -1).any(dim=1)
        lens, group_of = mb.mask.sum(dim=1).numpy(), mb.group_index.numpy()
        if bool(failed.any()):
            lens = np.concatenate([lens, (mb.chosen[failed] >= 0).sum(dim=1).numpy()])
            group_of = np.concatenate([group_of, torch.nonzero(failed).squeeze(1).numpy()])
        model += group_logprob_calls(mb.prompt_mask.sum(dim=1).numpy(), lens, group_of, shape.vocab, True)
    add("rl_update", f"{batch.num_groups} groups of {group} (from {oversample}): reference + behaviour "
        "log-probs, 2 minibatches forward + backward", flops, calls, model, rl_update)

    # (d) beam-search evaluation (full scoring, the reference protocol), per request
    brows = np.arange(beam_requests)

    def beam_search() -> None:
        policy.beam_search(*task.prompt_tokens(brows), width=beam, k=beam)

    _, flops, calls = counted((policy,), beam_search)
    trunk = [c for c in calls if c.kind == "trunk"]
    sparse = [c for c in calls if c.kind == "head_sparse"]
    model = beam_calls(beam_requests, trunk[0].new, [c.rows for c in sparse], [c.rows for c in trunk[1:]],
                       [c.width for c in sparse], shape.vocab)
    add("beam_eval", f"{beam_requests} requests, beam {beam} (numbers per request)", flops, calls, model,
        beam_search, per=beam_requests)

    out: dict[str, Any] = {}
    for name, ph in phases.items():
        seconds = timed(runs[name])
        policy.model.zero_grad(set_to_none=True)
        calls, model, per = ph.pop("calls"), ph.pop("model"), ph.pop("per")
        measured = ph.pop("measured_flops")
        formula, recorded = total_flops(shape, model), total_flops(shape, calls)
        trunk = [c for c in calls if c.kind == "trunk"]
        entry = {**ph, "measured_flops": measured / per, "formula_flops": formula / per,
                 "ratio_measured_over_formula": round(measured / formula, 4),
                 "ratio_measured_over_formula_on_recorded_calls": round(measured / recorded, 4),
                 "trunk_forwards": len(trunk) / per,
                 "trunk_forward_equivalents": sum(3 if c.train else 1 for c in trunk) / per,
                 "cpu_seconds": round(seconds / per, 4)}
        if "measured_forward_flops" in ph:
            entry["backward_over_forward"] = round((measured - ph["measured_forward_flops"])
                                                   / ph["measured_forward_flops"], 4)
        out[name] = entry
    return {"shape": asdict(shape), "linear_params": shape.linear_params,
            "params": sum(p.numel() for p in policy.model.parameters()),
            "task": "synthetic catalogue with titles (300 items, BPE vocabulary 600), eager attention, fp32",
            "phases": out}


# -- this CPU: GEMM peak, eager dispatch per forward, and the formula against measured step times -------


def dispatch_seconds(items: Any, layers: int, steps: int = 20, repeats: int = 5) -> float:
    """Seconds of one decode forward (1 row, 1 token) of a d=64 Qwen2 of ``layers`` blocks: its dispatch."""
    from agents.model.policy import LLMPolicy

    policy = LLMPolicy.from_config({"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": layers,
                                    "num_attention_heads": 4, "num_key_value_heads": 2}, items, device="cpu")
    ids = torch.full((1, 16), 5)
    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            _, cache = policy._forward(ids, torch.ones_like(ids))
            attn = torch.ones_like(ids)
            tick = time.perf_counter()
            for _ in range(steps):
                attn = torch.cat([attn, attn[:, :1]], dim=1)
                _, cache = policy._forward(ids[:, :1], attn, cache)
            best = min(best, (time.perf_counter() - tick) / steps)
    return best


def tiny_rl_step() -> dict[str, Any]:
    """The workload of ``distributed.json`` (tiny model, RISER 8 of 10, 16 requests, 2 minibatches; beam-20
    evaluation in batches of 16): FLOPs and forwards per step counted, and seconds timed on this thread."""
    from agents.configs import RLConfig
    from agents.learners import make_learner
    from agents.model.policy import LLMPolicy
    from agents.training.evaluate import evaluate
    from agents.training.rl import train_rl
    from recgym.envs import RecGenTask

    kwargs = {"num_items": 300, "num_users": 400}
    train = RecGenTask("synthetic", split="train", representation="sid", vocab_size=400,
                       dataset_kwargs=kwargs)
    test = RecGenTask("synthetic", split="test", tokenizer=train.items, dataset_kwargs=kwargs)
    policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    learner = make_learner("riser", group_size=8, oversample=10)
    shape = ModelShape.of(policy.model.config)

    def rl(steps: int) -> None:
        cfg = RLConfig(steps=steps, requests_per_step=16, minibatches=2, lr=1e-4, eval_every=0,
                       progress=False, env_id="RecGen-Synthetic-v0")
        train_rl(policy, learner, train, None, cfg)

    def ev() -> None:
        evaluate(policy, test, beam=20, max_requests=16, batch_size=16, progress=False)

    _, rl_counted, rl_calls = counted((policy,), lambda: rl(1))
    rl_seconds = timed(lambda: rl(2)) / 2
    _, ev_counted, ev_calls = counted((policy,), ev)
    ev_seconds = timed(ev) / 16
    out = {}
    for name, calls, flops, seconds, per in (("rl_step", rl_calls, rl_counted, rl_seconds, 1),
                                             ("eval_request", ev_calls, ev_counted, ev_seconds, 16)):
        out[name] = {"formula_flops": total_flops(shape, calls) / per,
                     "measured_flops_without_sdpa": flops / per,
                     "trunk_forward_equivalents": sum(3 if c.train else 1 for c in calls
                                                      if c.kind == "trunk") / per,
                     "cpu_seconds_one_thread": round(seconds, 4)}
    return out


# -- token lengths on real data (the project's task builder) ---------------------------------------------


def _games_dataset() -> Any:
    """LC-Rec's Amazon Video Games histories (no titles) with BIGRec's Video Games titles by item index.

    The two releases share no item key, so the pairing of titles to items is arbitrary; the token counts
    only depend on how long the titles and the histories are, which are both real Games numbers.
    """
    from recgym.data import load
    from recgym.data.dataset import Catalogue
    from recgym.data.registry import search_path

    ds = load("games-lcrec", max_history=10)
    titles: dict[int, str] = {}
    for root in search_path():
        path = Path(root) / "games-bigrec" / "id2name.txt"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                title, _, index = line.rpartition("\t")
                titles[int(index)] = title.strip()
            break
    n = ds.catalogue.num_items
    if len(titles) < n:
        raise FileNotFoundError("games-bigrec/id2name.txt (BIGRec's Video Games titles) not found")
    return dataclasses.replace(ds, name="games-proxy", catalogue=Catalogue(
        n, titles=[titles[i] for i in range(n)], sids=ds.catalogue.sids))


def _lengths(train: Any, test: Any, rng: np.random.Generator, rows: int = 6000) -> dict[str, Any]:
    """Prompt and target-title token counts of ``rows`` train and test requests, and the sparse head's
    width per decode step for 640 sampled titles (32 x 20 rollouts)."""
    pick = rng.choice(train.num_requests, min(rows, train.num_requests), replace=False)
    _, prompt = train.prompt_tokens(pick)
    seqs = train.items.sequences
    target = np.array([len(seqs[int(i)]) for i in train.examples.target[pick]])
    pick_test = rng.choice(test.num_requests, min(rows // 2, test.num_requests), replace=False)
    _, test_prompt = test.prompt_tokens(pick_test)
    sampled = [seqs[int(i)] for i in train.examples.target[rng.choice(pick, 640)]]
    padded = np.full((len(sampled), max(len(s) for s in sampled)), -1, dtype=np.int64)
    for i, s in enumerate(sampled):
        padded[i, :len(s)] = s
    states = train.tree.path_states(padded)
    allowed = []
    for t in range(states.shape[1]):
        alive = states[:, t][states[:, t] >= 0]
        allowed.append(int(np.unique(train.tree.allowed_tokens(alive)[1]).size))
    catalogue = np.array([len(s) for s in seqs])

    def stats(a: np.ndarray) -> dict[str, float]:
        return {"mean": round(float(a.mean()), 1), "p50": float(np.percentile(a, 50)),
                "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": int(a.max())}

    return {"arrays": {"prompt": prompt, "target": target, "test_prompt": test_prompt, "allowed": allowed},
            "summary": {"train_requests_sampled": len(pick), "test_requests_sampled": len(pick_test),
                        "test_requests": test.num_requests, "history_items_mean":
                            round(float(train.examples.history_len[pick].mean()), 2),
                        "prompt_tokens": stats(prompt), "test_prompt_tokens": stats(test_prompt),
                        "target_title_tokens": stats(target), "catalogue_title_tokens": stats(catalogue),
                        "sparse_head_width_by_step_640_rows": allowed[:12],
                        "root_branching": allowed[0], "tokenizer_vocab": train.items.vocab_size}}


def measure_lengths(tokenizer: str = "smollm2-135m", seed: int = 0) -> dict[str, Any]:
    """Token counts on real data through ``agents.build.make_task`` with a local tokenizer: Games (the
    paper preset's dataset, titles) and office-d3 (D3 titles, longer; a sensitivity case)."""
    from agents.build import make_task

    rng = np.random.default_rng(seed)
    games = _games_dataset()
    games_task = {"dataset": games, "representation": "title"}
    train = make_task("RecGen-v0", "train", games_task, tokenizer=tokenizer)
    test = make_task("RecGen-v0", "test", games_task, tokenizer=train.items)
    out = {"games": {"source": "LC-Rec Video Games histories (max 10 items) + BIGRec Video Games titles, "
                               f"{tokenizer} tokenizer, the project's title template",
                     **_lengths(train, test, rng)}}
    office = {"dataset": "office-d3", "representation": "title", "max_history": 10}
    train = make_task("RecGen-v0", "valid", office, tokenizer=tokenizer)
    test = make_task("RecGen-v0", "test", office, tokenizer=train.items)
    out["office-d3"] = {"source": f"D3 Office_Products valid (train-like) and test, {tokenizer} tokenizer, "
                                  "10-item histories", **_lengths(train, test, rng)}
    return out


# -- the estimate on paper ---------------------------------------------------------------------------------


def gpu_seconds(shape: ModelShape, calls: list[Call], gpu: dict[str, float], launch: float) -> float:
    """Roofline per call: max(FLOPs / (peak x MFU), bytes / (HBM x efficiency), launch floor).

    Decode and head calls at inference read the weights they use and the KV cache; prefill and training
    are compute-bound. ``launch``: seconds a forward through the blocks cannot go below (3x with backward).
    """
    total = 0.0
    hbm = gpu["hbm_bytes_per_s"] * ASSUMED["hbm_efficiency"]
    for c in calls:
        compute = call_flops(shape, c) / (gpu["bf16_flops"] * ASSUMED["mfu"])
        memory, floor = 0.0, 0.0
        if c.kind == "trunk":
            if not c.train and c.new == 1:
                memory = shape.block_bytes + c.rows * c.ctx * shape.kv_bytes_per_token
            floor = launch * (3 if c.train else 1)
        elif not c.train:
            memory = 2 * shape.hidden * c.width + (8 * c.rows * c.width if c.kind == "head_full" else 0)
        total += max(compute, memory / hbm, floor)
    return total


def _link(gpu: dict[str, float]) -> float:
    return gpu["nvlink_bytes_per_s"] * ASSUMED["nvlink_efficiency"]


def allreduce_seconds(nbytes: float, n: int, gpu: dict[str, float]) -> float:
    """Ring all-reduce: each GPU sends and receives 2 (N-1)/N of the bytes over NVLink."""
    return 0.0 if n == 1 else 2 * (n - 1) / n * nbytes / _link(gpu)


def gather_seconds(nbytes: float, n: int, gpu: dict[str, float]) -> float:
    """Ring all-gather or reduce-scatter: (N-1)/N of the bytes."""
    return 0.0 if n == 1 else (n - 1) / n * nbytes / _link(gpu)


def _tokens(calls: list[Call]) -> int:
    """Tokens through the blocks (padding included)."""
    return sum(c.rows * c.new for c in calls if c.kind == "trunk")


def _scored(calls: list[Call]) -> int:
    """Rows through the full-vocabulary head."""
    return sum(c.rows for c in calls if c.kind == "head_full")


def estimate(shape: ModelShape, data: dict[str, Any], preset: Any, gpu: dict[str, float], n: int,
             launch: float, seed: int = 0) -> dict[str, Any]:
    """Seconds per SFT step, per RL step and per beam batch on ``n`` GPUs (global batch fixed, each rank
    takes its shard as the code cuts it), averaged over Monte-Carlo draws of real token lengths.

    A step waits for its slowest rank: SFT at its all-reduce, RL at each minibatch's all-reduce.
    """
    rng = np.random.default_rng(seed)
    trials = ASSUMED["trials"]
    prompt, target, test_prompt = data["prompt"], data["target"], data["test_prompt"]
    allowed, vocab = data["allowed"], shape.vocab
    m, g = preset.rollouts_per_request, preset.riser_group
    comm = allreduce_seconds(ASSUMED["grad_bytes_per_param"] * shape.params, n, gpu)
    hbm = gpu["hbm_bytes_per_s"] * ASSUMED["hbm_efficiency"]
    opt = ASSUMED["optimizer_bytes_per_param"] * shape.params / hbm
    sft, rl, parts = [], [], []
    acc = dict.fromkeys(("sft", "rollout", "logprobs", "update", "update_padded", "update_real", "sft_tokens",
                         "sft_scored", "rl_peak_tokens", "rl_peak_scored"), 0.0)
    for _ in range(trials):
        rows = rng.choice(len(prompt), preset.sft_batch_size, replace=False)
        ranks = []
        for shard in np.array_split(rows, n):
            calls = sft_calls(prompt[shard], target[shard], vocab)
            ranks.append(gpu_seconds(shape, calls, gpu, launch))
            acc["sft"] += total_flops(shape, calls) / trials
            acc["sft_tokens"] += _tokens(calls) / trials / n
            acc["sft_scored"] += _scored(calls) / trials / n
        sft.append(max(ranks) + comm + opt)
        # RL: each rank rolls out its shard of every minibatch, then the update minibatch by minibatch
        req = rng.choice(len(prompt), preset.requests_per_step, replace=False)
        pre, updates, peak = [], np.zeros(preset.minibatches), (0, 0)
        for r in range(n):
            shards = dist.minibatch_shards(preset.requests_per_step, preset.minibatches, r, n)
            mine = req[np.concatenate(shards)]
            pad = int(prompt[mine].max())
            lens = rng.choice(target, size=(len(mine), m))
            roll = rollout_calls(len(mine), pad, lens.ravel(), allowed)
            kept = lens[:, :g]  # RISER keeps n of the m samples (their lengths are exchangeable)
            logp = 2 * group_logprob_calls(prompt[mine], kept.ravel(), np.repeat(np.arange(len(mine)), g),
                                           vocab, False)
            pre.append((gpu_seconds(shape, roll, gpu, launch), gpu_seconds(shape, logp, gpu, launch)))
            acc["rollout"] += total_flops(shape, roll) / trials
            acc["logprobs"] += total_flops(shape, logp) / trials
            start = 0
            for j, part in enumerate(shards):
                groups = np.arange(start, start + len(part))
                start += len(part)
                lens_mb = kept[groups].ravel()
                group_of = np.repeat(np.arange(len(part)), g)
                failed = int(round(len(part) * ASSUMED["failed_group_fraction"]))
                if failed:  # SimPO's chosen item rides along for the failed groups
                    lens_mb = np.concatenate([lens_mb, target[mine[groups[:failed]]]])
                    group_of = np.concatenate([group_of, np.arange(failed)])
                calls = group_logprob_calls(prompt[mine[groups]], lens_mb, group_of, vocab, True)
                updates[j] = max(updates[j], gpu_seconds(shape, calls, gpu, launch))
                acc["update"] += total_flops(shape, calls) / trials
                acc["update_padded"] += _tokens(calls) / trials
                acc["update_real"] += (int(prompt[mine[groups]].sum()) + int(lens_mb.sum())) / trials
                peak = max(peak, (_tokens(calls), _scored(calls)))
        acc["rl_peak_tokens"] += peak[0] / trials
        acc["rl_peak_scored"] += peak[1] / trials
        rollout_s = max(p[0] for p in pre)
        parts.append((rollout_s, max(p[0] + p[1] for p in pre) - rollout_s, float(updates.sum()),
                      preset.minibatches * (comm + opt)))
        rl.append(sum(parts[-1]))
    # beam-50 evaluation: batches of 16 requests, whole batches sharded over the ranks
    width, batch = preset.beam, 16
    steps = int(np.percentile(target, 90))
    beam, beam_flops = [], 0.0
    for _ in range(trials):
        rows = rng.choice(len(test_prompt), batch, replace=False)
        calls = beam_calls(batch, int(test_prompt[rows].max()), [batch] + [batch * width] * (steps - 1),
                           [batch * width] * (steps - 1), allowed, vocab)
        beam.append(gpu_seconds(shape, calls, gpu, launch))
        beam_flops += total_flops(shape, calls) / trials / batch
    batches = math.ceil(data["test_requests"] / batch)
    tail = batches / n / math.ceil(batches / n)  # the last round leaves some ranks idle
    t_sft, t_rl, t_beam = float(np.mean(sft)), float(np.mean(rl)), float(np.mean(beam))
    rollout_s, logp_s, update_s, comm_s = (float(np.mean([p[i] for p in parts])) for i in range(4))
    # FSDP (not overlapped): the blocks all-gathered per pass through them and reduce-scattered once,
    # the embeddings all-reduced; RL also gathers the blocks once for its rollouts.
    blocks, embed = shape.block_bytes, 2 * shape.vocab * shape.hidden
    fsdp_sft = 3 * gather_seconds(blocks, n, gpu) + allreduce_seconds(embed, n, gpu)
    fsdp_rl = gather_seconds(blocks, n, gpu) + preset.minibatches * (
        5 * gather_seconds(blocks, n, gpu) + allreduce_seconds(embed, n, gpu))
    return {
        "sft": {"seconds_per_step": t_sft, "samples_per_s": preset.sft_batch_size / t_sft,
                "allreduce_s": comm, "optimizer_s": opt, "fsdp_comm_s_if_not_overlapped": fsdp_sft,
                "padded_tokens_per_rank": acc["sft_tokens"], "scored_tokens_per_rank": acc["sft_scored"]},
        "rl": {"seconds_per_step": t_rl, "rollout_s": rollout_s, "ref_old_logprobs_s": logp_s,
               "update_s": update_s, "allreduce_and_optimizer_s": comm_s,
               "rollouts_per_s": preset.requests_per_step * m / t_rl,
               "fsdp_comm_s_if_not_overlapped": fsdp_rl,
               "update_tokens_padded": acc["update_padded"], "update_tokens_real": acc["update_real"],
               "update_padding_factor": acc["update_padded"] / acc["update_real"],
               "update_peak_tokens_per_rank": acc["rl_peak_tokens"],
               "update_peak_scored_per_rank": acc["rl_peak_scored"]},
        "eval": {"seconds_per_batch_of_16": t_beam, "beam_steps": steps,
                 "requests_per_s": n * batch / t_beam * tail, "test_requests": data["test_requests"]},
        "flops_global": {"sft_step": acc["sft"], "rl_rollouts": acc["rollout"],
                         "rl_ref_old_logprobs": acc["logprobs"], "rl_update": acc["update"],
                         "rl_step": acc["rollout"] + acc["logprobs"] + acc["update"],
                         "beam_per_request": beam_flops},
    }


def memory_estimate(shape: ModelShape, row: dict[str, Any]) -> dict[str, Any]:
    """GB per GPU without FSDP (rough): bf16 weights, gradients and AdamW moments, the RL reference copy,
    activations kept for backward and fp32 logits (x3: logits, log-softmax, gradient) at scored tokens."""
    gb = 1e9
    static = 8 * shape.params / gb
    act, logits = shape.activation_bytes_per_token / gb, 12 * shape.vocab / gb
    sft = static + row["sft"]["padded_tokens_per_rank"] * act + row["sft"]["scored_tokens_per_rank"] * logits
    rl = (static + 2 * shape.params / gb + row["rl"]["update_peak_tokens_per_rank"] * act
          + row["rl"]["update_peak_scored_per_rank"] * logits)
    return {"weights_grads_adamw_gb": round(static, 1), "sft_step_gb": round(sft, 1),
            "rl_update_minibatch_gb": round(rl, 1), "fits_80gb": {"sft": sft < 80, "rl": rl < 80}}


def cpu_check(measured: dict[str, Any], peak: float) -> dict[str, Any]:
    """The formula on this CPU: the small model's SFT step fixes the CPU's FLOP efficiency; it then predicts
    every counted path's time (measured / predicted near 1 where FLOPs dominate)."""
    checks = list(measured["flop_check"].values())
    first = checks[0]["phases"]["sft_step"]
    efficiency = first["measured_flops"] / first["cpu_seconds"] / peak
    out: dict[str, Any] = {"cpu_efficiency": round(efficiency, 3),
                           "fitted_on": f"{next(iter(measured['flop_check']))} SFT step", "phases": {}}
    for name, check in measured["flop_check"].items():
        for phase, e in check["phases"].items():
            predicted = e["measured_flops"] / (peak * efficiency)
            out["phases"][f"{name} / {phase}"] = {
                "predicted_s": round(predicted, 4), "measured_s": e["cpu_seconds"],
                "measured_over_predicted": round(e["cpu_seconds"] / predicted, 2)}
    tiny = measured["cpu"]["tiny_model_distributed_json_workload"]["rl_step"]
    predicted = tiny["formula_flops"] / (peak * efficiency)
    out["tiny_rl_step"] = {"predicted_s": round(predicted, 4), "measured_s": tiny["cpu_seconds_one_thread"],
                           "measured_over_predicted": round(tiny["cpu_seconds_one_thread"] / predicted, 1)}
    return out


def paper_estimate() -> None:
    """Count, check, measure, estimate; write the JSON and the README excerpt."""
    from transformers import Qwen2Config

    from agents.bench.runner import PRESETS
    from recgym.envs import RecGenTask

    torch.manual_seed(0)
    tick = time.perf_counter()
    measured: dict[str, Any] = {"threads": torch.get_num_threads(), "flop_check": {}}
    for name, (sizes, vocab) in CHECK_MODELS.items():
        measured["flop_check"][name] = flop_check(sizes, vocab)
        print(f"counted {name}", file=sys.stderr)
    from bench_policy import gemm_peak  # the same measurement as the rollout benchmark's

    peak = gemm_peak(torch.get_num_threads(), repeats=3)
    items = RecGenTask("synthetic", split="train", representation="sid", vocab_size=400,
                       dataset_kwargs={"num_items": 300, "num_users": 400}).items
    d2, d8 = dispatch_seconds(items, 2), dispatch_seconds(items, 8)
    per_block = (d8 - d2) / 6
    dispatch = {"layers_2_s": round(d2, 5), "layers_8_s": round(d8, 5), "per_block_s": round(per_block, 6),
                "fixed_s": round(d2 - 2 * per_block, 6),
                "extrapolated_28_blocks_s": round(d2 + 26 * per_block, 4)}
    for check in measured["flop_check"].values():
        for ph in check["phases"].values():
            achieved = ph["measured_flops"] / ph["cpu_seconds"]
            ph["cpu_achieved_fraction_of_gemm_peak"] = round(achieved / peak, 3)
    tiny = tiny_rl_step()
    results = ROOT / "benchmarks" / "results"
    earlier = json.loads((results / "distributed.json").read_text())
    two_thread_peak = json.loads((results / "policy-smollm2-135m.json").read_text()).get("gemm_peak_flops")
    for key, run_key in (("rl_step", "rl_seconds_per_step"), ("eval_request", "eval_seconds_per_request")):
        tiny[key]["distributed_json_1_process_2_threads_s"] = earlier["runs"]["1 process"][run_key]
        tiny[key]["flops_over_gemm_peak_s"] = round(tiny[key]["formula_flops"] / peak, 5)
    measured["cpu"] = {"gemm_peak_flops_one_thread": peak,
                       "gemm_peak_flops_2_threads_bench_policy": two_thread_peak,
                       "eager_dispatch_per_decode_forward": dispatch,
                       "tiny_model_distributed_json_workload": tiny}
    try:
        lengths = measure_lengths()
        length_label = "measured"
    except (FileNotFoundError, OSError, ValueError, ImportError) as err:  # no data or tokenizer here
        print(f"token lengths not measured ({err}); using assumed lengths", file=sys.stderr)
        fixed = {"prompt": np.full(1000, 230), "target": np.full(1000, 30), "test_prompt": np.full(1000, 230),
                 "allowed": [3000] + [1000] * 30}
        lengths = {"assumed": {"source": "assumed: prompt 230 tokens, title 30 tokens", "arrays": fixed,
                               "summary": {"test_requests": 50546}}}
        length_label = "assumed"
    measured["token_lengths"] = {k: {"source": v["source"], **v["summary"]} for k, v in lengths.items()}

    preset = PRESETS["paper"]
    shape = ModelShape.of(Qwen2Config(**QWEN2_1_5B))
    computed: dict[str, Any] = {
        "flop_formula_ratios": {name: {ph: e["ratio_measured_over_formula"] for ph, e in c["phases"].items()}
                                for name, c in measured["flop_check"].items()},
        "cpu_check": cpu_check(measured, peak),
        "qwen2_1_5b": {"params": shape.params, "linear_params": shape.linear_params,
                       "embedding_params": shape.vocab * shape.hidden,
                       "flops_per_token_forward": 2 * shape.linear_params,
                       "kv_cache_bytes_per_token": shape.kv_bytes_per_token,
                       "block_weight_bytes": shape.block_bytes},
        "scenarios": {}}
    for scenario, data in lengths.items():
        arrays = {**data["arrays"], "test_requests": data["summary"]["test_requests"]}
        out: dict[str, Any] = {}
        for gpu_name, gpu in GPUS.items():
            for mode, launch in (("eager", ASSUMED["launch_seconds_per_forward"]), ("roofline", 0.0)):
                rows = {n: estimate(shape, arrays, preset, gpu, n, launch) for n in GPU_COUNTS}
                for n, row in rows.items():
                    for key in ("sft", "rl"):
                        base = rows[1][key]["seconds_per_step"]
                        row[key]["efficiency"] = base / (n * row[key]["seconds_per_step"])
                    base = rows[1]["eval"]["requests_per_s"]
                    row["eval"]["efficiency"] = row["eval"]["requests_per_s"] / (n * base)
                    row["rl"]["mfu_of_step"] = row["flops_global"]["rl_step"] / (
                        row["rl"]["seconds_per_step"] * n * gpu["bf16_flops"])
                    row["allreduce_s_fp32_grads"] = allreduce_seconds(4 * shape.params, n, gpu)
                out[f"{gpu_name} / {mode}"] = {str(n): _rounded(row) for n, row in rows.items()}
        first = out[f"{next(iter(GPUS))} / eager"]
        computed["scenarios"][scenario] = {
            "token_lengths": length_label, "estimates": out,
            "memory_per_gpu": {n: memory_estimate(shape, row) for n, row in first.items()}}
    result = {
        "what": "FLOPs per step of the project's SFT / RL / beam-search code paths counted on small Qwen2 "
                "models on this CPU, checked against the transformer formula, and applied on paper to "
                "Qwen2-1.5B on 1-8 GPUs. Nothing here ran on a GPU: every GPU number is computed.",
        "labels": {"measured": "counted or timed on this machine", "assumed": "inputs taken as given",
                   "computed": "derived from measured and assumed numbers by the formula"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "paper_preset": {k: getattr(preset, k) for k in (
            "env", "task", "sft_batch_size", "requests_per_step", "rollouts_per_request", "riser_group", "mu",
            "minibatches", "beam")},
        "measured": measured,
        "assumed": {**ASSUMED, "gpus": GPUS, "qwen2_1_5b_config": QWEN2_1_5B, "eval_batch_size": 16,
                    "learner": "RISER (m=20 sampled, n=16 kept), beta > 0 (a reference policy)"},
        "computed": computed,
        "seconds": round(time.perf_counter() - tick, 1),
    }
    PAPER_OUT.parent.mkdir(parents=True, exist_ok=True)
    PAPER_OUT.write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    README_OUT.write_text(readme(result))
    print(README_OUT.read_text())
    print(f"wrote {PAPER_OUT} and {README_OUT} in {result['seconds']} s", file=sys.stderr)


def _rounded(row: Any) -> Any:
    """Floats to 4 significant digits."""
    if isinstance(row, dict):
        return {k: _rounded(v) for k, v in row.items()}
    if isinstance(row, float):
        return float(f"{row:.4g}")
    return row


def _jsonable(value: Any) -> Any:
    """Numpy values and arrays as plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def readme(result: dict[str, Any]) -> str:
    """The README excerpt (under 25 lines): what was measured here, what is computed on paper, a table."""
    import textwrap

    comp, meas = result["computed"], result["measured"]
    scenario = next(iter(comp["scenarios"]))
    est = comp["scenarios"][scenario]["estimates"]
    h, hr, a = est["H100 80GB SXM / eager"], est["H100 80GB SXM / roofline"], est["A100 80GB SXM / eager"]
    ratios = [r for m in comp["flop_formula_ratios"].values() for r in m.values()]
    lengths = meas["token_lengths"].get(scenario, {})
    prompt, title = lengths.get("prompt_tokens", {}), lengths.get("target_title_tokens", {})
    cpu, dispatch = comp["cpu_check"], meas["cpu"]["eager_dispatch_per_decode_forward"]
    other = list(meas["flop_check"])[1]
    train = [cpu["phases"][f"{other} / {p}"]["measured_over_predicted"] for p in ("sft_step", "rl_update")]
    decode = [cpu["phases"][f"{other} / {p}"]["measured_over_predicted"] for p in ("rollout", "beam_eval")]
    flops = h["1"]["flops_global"]
    memory = comp["scenarios"][scenario]["memory_per_gpu"]["1"]["rl_update_minibatch_gb"]

    def row(label: str, rows: dict[str, Any], key: str, field: str, fmt: str) -> str:
        cells = " | ".join(format(rows[str(n)][key][field], fmt) for n in GPU_COUNTS)
        efficiency = f"{rows['8'][key]['efficiency']:.0%}" if field != "rollout_s" else ""
        return f"| {label} | {cells} | {efficiency} |"

    first = (
        "**Qwen2-1.5B on 8 GPUs, on paper.** `python benchmarks/bench_distributed.py --paper-estimate` "
        "counts FLOPs (`FlopCounterMode`) through the project's SFT loss, `LLMPolicy.rollout`, RISER's "
        "update and `beam_search` on two small Qwen2 models; they equal the formula 2 N_lin + 4 L d ctx per "
        f"token, 2 d V per scored token, backward 2x (ratio {min(ratios):.4f}-{max(ratios):.4f}). Games "
        f"prompts average {prompt.get('mean', 0):.0f} tokens, titles {title.get('mean', 0):.0f} (measured: "
        "LC-Rec histories, BIGRec titles, SmolLM2's tokenizer for Qwen2's), so the `paper` preset costs "
        f"{flops['sft_step'] / 1e12:.0f} TFLOP per SFT step, {flops['rl_step'] / 1e12:.0f} per RL step, "
        f"{flops['beam_per_request'] / 1e12:.1f} per beam-50 request.")
    second = (
        "Nothing ran on a GPU; assumed: datasheet peaks (H100 SXM 989 TFLOP/s bf16, 3.35 TB/s, NVLink 450 "
        f"GB/s), {ASSUMED['mfu']:.0%} MFU, 80% of HBM/NVLink bandwidth, each forward >= max(FLOPs, weight + "
        "KV bytes, 10 ms eager launch), bf16 gradients all-reduced after backward, the global batch fixed. "
        "RL is rollout-bound (a decode step per token of the longest sampled title, each at the launch "
        f"floor); the 1-GPU RL update needs ~{memory:.0f} GB (no activation checkpointing), so that column "
        "is a baseline only. Measured on this CPU (one busy thread): "
        f"{meas['cpu']['gemm_peak_flops_one_thread'] / 1e9:.0f} GFLOP/s GEMM peak, "
        f"{dispatch['per_block_s'] * 1e3:.2f} ms eager dispatch per block; fitted on one model, the formula "
        f"predicts the other's training time to {min(train):.2f}-{max(train):.2f}x, decoding "
        f"{min(decode):.1f}-{max(decode):.1f}x (dispatch). All numbers: "
        "`benchmarks/results/distributed-paper-estimate.json`.")
    lines = [
        *textwrap.wrap(first, 100, break_on_hyphens=False), "",
        "| H100 SXM, `paper` preset (computed) | 1 GPU | 2 | 4 | 8 GPUs | efficiency at 8 |",
        "|---|---|---|---|---|---|",
        row("SFT step, 64 sequences (s)", h, "sft", "seconds_per_step", ".3f"),
        row("RL step, 32 x 20 rollouts + update (s)", h, "rl", "seconds_per_step", ".2f"),
        row("of which rollouts (s)", h, "rl", "rollout_s", ".2f"),
        row("RL step without the 10 ms floor (s)", hr, "rl", "seconds_per_step", ".2f"),
        row("beam-50 test (requests/s)", h, "eval", "requests_per_s", ".0f"),
        row("A100 SXM: RL step (s)", a, "rl", "seconds_per_step", ".2f"),
        "", *textwrap.wrap(second, 100, break_on_hyphens=False),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
