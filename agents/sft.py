"""Supervised fine-tuning: next-item prediction on the train split, loss on response tokens only.

The loss is the negative log-likelihood of the target item's tokens,

    L = - (1 / sum_i |y_i|) * sum_i sum_t log pi(y_i,t | x_i, y_i,<t)

token-averaged over the batch, with pi the policy's objective: by default the full-vocabulary
softmax (cross-entropy over the whole vocabulary, as D3 / BIGRec / ReRe / MiniOneRec), the same
distribution RL then trains; ``LLMPolicy(objective="constrained")`` renormalises over the tokens the
prefix tree allows instead. Validation HR@K (constrained beam search) drives early
stopping; checkpoints are atomic and training resumes exactly where it stopped.

Under ``torchrun`` (data parallelism, :mod:`agents.distributed`) each step's batch is the global
batch of one process: every rank takes a contiguous shard of its rows, divides its token sum by the
global token count and the ranks' gradients are summed, so N ranks take the step one process takes
on the same batch. Rank 0 alone writes the run folder; every rank validates (a sharded collective).
``SFTConfig(fsdp=True)`` (``--fsdp``) also shards the decoder blocks' weights, gradients and AdamW
states over the ranks (:mod:`agents.fsdp`); the steps, files and metrics are the same.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents import distributed as dist
from agents import fsdp
from agents.checkpoint import load_weights, restore_training, save_training
from agents.configs import SFTConfig
from agents.policy import LLMPolicy
from agents.runs import (
    check_finite,
    check_finite_weights,
    check_policy_task,
    open_run_on_main,
    run_fingerprint,
    saved_note,
)
from agents.tracking import MetricLogger
from agents.training import check_valid_sample, shard_for_training, validate, warmup_cosine
from recgym.envs.task import RecGenTask


def train_sft(
    policy: LLMPolicy,
    train_task: RecGenTask,
    valid_task: RecGenTask | None = None,
    config: SFTConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    restart: bool = False,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``policy`` on ``train_task``'s requests; returns a summary with the best validation.

    With ``run_dir``, metrics go to ``metrics.jsonl`` (and TensorBoard), the latest state to
    ``checkpoint/`` (resumed from when present) and the best weights to ``best/``; at the end the
    policy holds the best weights. ``fingerprint.json`` records what determines the result
    (config, data, starting weights, plus ``run_info`` from the caller): a folder holding a run
    with another fingerprint is refused unless ``restart``, which starts over there
    (:mod:`agents.runs`); the folder is locked while the run uses it. A non-finite loss or
    gradient norm stops training with a :class:`~agents.runs.DivergedError` before anything
    non-finite is saved.

    Under ``torchrun`` every rank calls it with the same arguments (module docstring): rank 0 locks
    and writes ``run_dir``, the others read its checkpoint when resuming.

    Example:
        >>> # summary = train_sft(policy, RecGenTask(ds, split="train", tokenizer=policy.items),
        >>> #                     RecGenTask(ds, split="valid", tokenizer=policy.items), SFTConfig(epochs=1))
    """
    cfg = config or SFTConfig()
    check_valid_sample(cfg.eval_requests, valid_task)
    if cfg.fsdp:
        fsdp.check(policy)  # adapters are refused before anything is opened
    if train_task.num_requests == 0:
        raise ValueError(f"the {train_task.split!r} split has no requests to train on")
    for task in (train_task, valid_task):
        if task is not None:
            check_policy_task(policy.items, task)
    if run_dir is None:
        return _train_sft(policy, train_task, valid_task, cfg, None, False)
    run = Path(run_dir)
    fingerprint = run_fingerprint("sft", cfg, train_task, valid_task, policy=policy, extra=run_info)
    with open_run_on_main(run, fingerprint, restart=restart) as resuming:
        return _train_sft(policy, train_task, valid_task, cfg, run, resuming)


def _train_sft(
    policy: LLMPolicy, train_task: RecGenTask, valid_task: RecGenTask | None, cfg: SFTConfig,
    run: Path | None, resuming: bool,
) -> dict[str, Any]:
    n = train_task.num_requests
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    torch.manual_seed(cfg.seed)
    main = dist.is_main()
    dist.broadcast_parameters(policy.model)  # every rank starts from rank 0's weights (as DDP does)
    # FSDP (--fsdp under torchrun): the checkpoint's weights are loaded, then the blocks sharded.
    sharding = shard_for_training(policy, cfg.fsdp, run / "checkpoint" if resuming else None)
    params = policy.trainable_parameters()  # all of them unless adapters freeze a part
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total))
    state = {"step": 0, "best": -1.0, "best_step": 0, "bad_evals": 0, "history": []}
    restored = (restore_training(run / "checkpoint", policy, optimizer, scheduler, weights=sharding is None)
                if resuming else None)
    state = restored or state
    saved_step = state["step"] if restored is not None else None
    if restored is not None and cfg.progress and main:
        print(f"resuming {run} from step {state['step']} (--restart starts over)", file=sys.stderr)
    logger = (MetricLogger(run, from_step=state["step"] + 1 if restored else 0)
              if run is not None and main else None)
    start_time = time.time()
    bar = tqdm(total=total, initial=state["step"], desc="sft", disable=not cfg.progress or not main)
    stop = state["step"] >= total
    policy.model.train()
    try:
        while not stop:
            epoch, offset = divmod(state["step"], steps_per_epoch)
            order = np.random.default_rng(cfg.seed + epoch).permutation(n)  # reproducible on resume
            for b in range(offset, steps_per_epoch):
                rows = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]  # the global batch
                saved = saved_note(run, saved_step)
                mine = rows[dist.shard_slice(len(rows))]
                with dist.loss_sync():  # this rank's share of the global batch's token-mean loss
                    if sharding is not None and len(mine) == 0:  # FSDP: the blocks' collectives still run
                        loss, tokens = _zero_loss(policy, train_task, rows[:1])
                    else:
                        loss, tokens = sft_loss(policy, train_task, mine)
                loss_value = dist.all_sum(loss.item())  # the global loss (the same number on every rank)
                tokens = int(dist.all_sum(tokens))
                check_finite(loss_value, "loss", state["step"] + 1, cfg.lr, saved)
                optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:  # False only on a rank whose shard is empty
                    loss.backward()
                dist.sum_gradients(params)  # the global loss's gradient on every rank
                grad_norm = dist.clip_grad_norm(params, cfg.grad_clip)  # its global norm, also under FSDP
                check_finite(float(grad_norm), "gradient norm", state["step"] + 1, cfg.lr, saved)
                optimizer.step()
                scheduler.step()
                state["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}")
                if logger is not None:
                    logger.log({"loss": loss_value, "grad_norm": float(grad_norm),
                                "lr": scheduler.get_last_lr()[0], "tokens": tokens}, state["step"])
                last = state["step"] >= total
                if valid_task is not None and (state["step"] % eval_every == 0 or last):
                    stop = validate(policy, valid_task, cfg, state, logger, run, saved) or last
                if run is not None and (state["step"] % eval_every == 0 or last):
                    check_finite_weights(policy.model, "checkpoint/", state["step"], cfg.lr, saved)
                    full = fsdp.full_state_dict(policy.model)  # FSDP: gathered for rank 0 (else None)
                    moments = fsdp.full_optimizer_state(optimizer)
                    with dist.on_main("saving checkpoint/") as writing:
                        if writing:
                            save_training(run / "checkpoint", policy, optimizer, scheduler, state,
                                          asdict(cfg), model_state=full, optimizer_state=moments)
                    saved_step = state["step"]
                if stop or last:
                    stop = True
                    break
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if sharding is not None:
        sharding.restore()  # an ordinary model again, with the trained weights, on every rank
    if run is not None and (run / "best").exists():
        load_weights(policy, run / "best")
    policy.model.eval()
    return {"steps": state["step"], "best_valid": state["best"], "best_step": state["best_step"],
            "metric": cfg.metric, "seconds": round(time.time() - start_time, 2),
            "valid_history": state["history"]}


def _zero_loss(policy: LLMPolicy, task: RecGenTask, rows: np.ndarray) -> tuple[torch.Tensor, int]:
    """A rank with no rows under FSDP: the forward and backward of ``rows`` (another rank's) times 0,
    so that it takes part in the blocks' all-gathers and reduce-scatters; 0 tokens."""
    responses = policy.item_responses(task.examples.target[rows])
    logp, _, mask = policy.sequence_logprobs(*task.prompt_tokens(rows), responses)
    dist.global_sum(0)  # after the forward, as sft_loss: the collectives in the same order on every rank
    return (logp * mask).sum() * 0.0, 0


def sft_loss(policy: LLMPolicy, task: RecGenTask, rows: np.ndarray) -> tuple[torch.Tensor, int]:
    """Token-mean negative log-likelihood of the target items of ``rows`` under the policy's objective.

    Returns ``(loss, tokens of rows)``. Inside :func:`agents.distributed.loss_sync` the mean is over the
    global batch's tokens (every rank's ``rows``): each rank's loss is its share, and the shares sum
    to the global loss. An empty ``rows`` gives a zero loss without a graph.

    Example:
        >>> # loss, tokens = sft_loss(policy, train_task, np.arange(16))
    """
    if len(rows) == 0:
        dist.global_sum(0)  # a collective within loss_sync: every rank takes part
        return torch.zeros((), device=policy.device), 0
    responses = policy.item_responses(task.examples.target[rows])
    logp, _, mask = policy.sequence_logprobs(*task.prompt_tokens(rows), responses)
    tokens = int(mask.sum())
    return -(logp * mask).sum() / dist.global_sum(tokens), tokens
