"""One RL update step (forward + backward): shared prompt + sparse head against TRL's full recompute.

Same model (the ``small`` preset with a 151,936-row output layer, as Qwen2), same batch: R requests
x n responses sampled by the policy (D3 title prompts over a real catalogue, ~200 tokens), same
GRPO loss (PPO-clip, token mean, stored old log-probs):

  * recgym: ``LLMPolicy.group_logprobs``: each prompt runs once, its KV cache is expanded n ways
    (gradients flow through it), and logits are computed for the allowed tokens only;
  * trl: what TRL's GRPOTrainer does: every row runs ``[prompt; response]`` in full, logits over the
    whole vocabulary for the response positions (``logits_to_keep``), masked to the tokens the
    prefix tree allows (so both compute the same constrained distribution), in micro-batches
    with gradient accumulation so that the logits fit in memory.

Both give the same loss and gradients (checked here, and on a tiny model by a test). Writes
``benchmarks/results/update.json``.

    python benchmarks/bench_update.py [--dataset office-d3] [--requests 16] [--group 16] [--model NAME]
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
from bench_policy import title_policy  # the same policies as the rollout / beam benchmark

from agents.learners.base import group_advantages
from agents.learners.grpo import aggregate, clipped_token_loss
from agents.model.policy import LLMPolicy, make_rollout_env


def grpo_loss(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, total: int,
              max_len: int) -> torch.Tensor:
    """PPO-clip token loss summed over ``mask`` / ``total`` tokens (so micro-batches add up)."""
    token_loss, _ = clipped_token_loss(logp, old, adv, 0.2, 0.28)
    return aggregate(token_loss, mask, "dapo", max_len) * mask.sum() / total


def trl_logprobs(policy: LLMPolicy, prompts: np.ndarray, lens: np.ndarray, responses: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-sequence recompute with full-vocabulary logits (masked to the allowed tokens and
    renormalised under the constrained objective, as ours then is)."""
    ids, attn = policy.left_pad(prompts, lens)
    states = torch.as_tensor(policy.tree.path_states(responses.numpy()))
    mask = states >= 0
    full_ids = torch.cat([ids, responses.clamp(min=0)], dim=1)
    full_attn = torch.cat([attn, mask.long()], dim=1)
    positions = (full_attn.cumsum(dim=1) - 1).clamp(min=0)
    t = responses.shape[1]
    logits = policy.model(input_ids=full_ids, attention_mask=full_attn, position_ids=positions,
                          logits_to_keep=t + 1, use_cache=False).logits[:, :-1].float()
    scored = logits[mask]
    if not policy.full_vocab:
        allowed = policy.tables.mask(states[mask], vocab_size=logits.shape[-1])
        scored = scored.masked_fill(~allowed, float("-inf"))
    logp_all = torch.log_softmax(scored, dim=-1)
    logp = torch.zeros(mask.shape)
    logp[mask] = logp_all.gather(1, responses[mask][:, None]).squeeze(1)
    return logp, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="office-d3")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", help="a real causal LM instead of the padded preset (e.g. smollm2-135m)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=32, help="rows per TRL micro-batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/update[-MODEL].json")
    args = parser.parse_args()
    suffix = f"-{Path(args.model).name}" if args.model else ""
    args.out = args.out or f"benchmarks/results/update{suffix}.json"
    torch.manual_seed(0)
    task, policy = title_policy(args.dataset, args.model, args.preset)
    r, n = args.requests, args.group
    envs = make_rollout_env(task, r * n)
    ro = policy.rollout(envs, group_size=n, rows=np.arange(r), generator=torch.Generator().manual_seed(0))
    responses = torch.where(ro.mask, ro.tokens, -1)
    index = torch.arange(r).repeat_interleave(n)
    prompts, lens = task.prompt_tokens(ro.rows)
    adv = group_advantages(torch.randn(r * n, generator=torch.Generator().manual_seed(1)), n)
    old = (ro.logprobs - 0.05) * ro.mask  # stored behaviour log-probs (slightly off, so the clip acts)
    total = int(ro.mask.sum())
    max_len = policy.tree.max_depth

    def recgym_step() -> torch.Tensor:
        policy.model.zero_grad(set_to_none=True)
        logp, _, mask = policy.group_logprobs(ro.prompt_ids, ro.prompt_mask, responses, index)
        loss = grpo_loss(logp, old, adv, mask, total, max_len)
        loss.backward()
        return loss.detach()

    def trl_step() -> torch.Tensor:
        policy.model.zero_grad(set_to_none=True)
        loss_sum = torch.zeros(())
        for start in range(0, r * n, args.micro_batch):  # gradient accumulation over micro-batches
            rows = slice(start, start + args.micro_batch)
            logp, mask = trl_logprobs(policy, prompts[rows], lens[rows], responses[rows])
            loss = grpo_loss(logp, old[rows], adv[rows], mask, total, max_len)
            loss.backward()
            loss_sum += loss.detach()
        return loss_sum

    def timed(step) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
        loss = step()  # warm-up, and the values we compare
        grads = [p.grad.clone() for p in policy.model.parameters()]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return float(np.median(times)), loss, grads

    t_ours, loss_ours, grads_ours = timed(recgym_step)
    t_trl, loss_trl, grads_trl = timed(trl_step)
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(grads_ours, grads_trl))
    grad_scale = max(float(b.abs().max()) for b in grads_trl)
    out = {
        "dataset": args.dataset, "model": args.model or f"{args.preset} (padded to Qwen2's vocabulary)",
        "objective": policy.objective, "model_vocab": policy.model.get_input_embeddings().weight.shape[0],
        "requests": r, "group": n, "prompt_tokens_mean": float(lens.mean()),
        "response_tokens_mean": float(ro.mask.sum(1).float().mean()), "trl_micro_batch": args.micro_batch,
        "seconds": {"recgym": t_ours, "trl": t_trl}, "speedup": t_trl / t_ours,
        "loss": {"recgym": float(loss_ours), "trl": float(loss_trl)},
        "max_abs_grad_diff": grad_diff, "max_abs_grad": grad_scale,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
