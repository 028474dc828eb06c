"""Supervised fine-tuning: next-item prediction on the train split, loss on response tokens only.

The loss is the negative constrained log-likelihood of the target item's tokens,

    L = - (1 / sum_i |y_i|) * sum_i sum_t log pi(y_i,t | x_i, y_i,<t)

with pi normalised over the tokens the prefix tree allows (the same distribution the policy samples
from), token-averaged over the batch. Validation HR@K (constrained beam search) drives early
stopping; checkpoints are atomic and training resumes exactly where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.checkpoint import load_weights, restore_training, save_training
from agents.configs import SFTConfig
from agents.policy import LLMPolicy
from agents.tracking import MetricLogger
from agents.training import validate, warmup_cosine
from recgym.envs.task import RecGenTask


def train_sft(
    policy: LLMPolicy,
    train_task: RecGenTask,
    valid_task: RecGenTask | None = None,
    config: SFTConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``policy`` on ``train_task``'s requests; returns a summary with the best validation.

    With ``run_dir``, metrics go to ``metrics.jsonl`` (and TensorBoard), the latest state to
    ``checkpoint/`` (resumed from when present) and the best weights to ``best/``; at the end the
    policy holds the best weights.

    Example:
        >>> # summary = train_sft(policy, RecGenTask(ds, split="train", tokenizer=policy.items),
        >>> #                     RecGenTask(ds, split="valid", tokenizer=policy.items), SFTConfig(epochs=1))
    """
    cfg = config or SFTConfig()
    n = train_task.num_requests
    if n == 0:
        raise ValueError(f"the {train_task.split!r} split has no requests to train on")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total))
    run = Path(run_dir) if run_dir is not None else None
    logger = MetricLogger(run) if run is not None else None
    state = {"step": 0, "best": -1.0, "best_step": 0, "bad_evals": 0, "history": []}
    if run is not None:
        state = restore_training(run / "checkpoint", policy, optimizer, scheduler) or state
    start_time = time.time()
    bar = tqdm(total=total, initial=state["step"], desc="sft", disable=not cfg.progress)
    stop = state["step"] >= total
    policy.model.train()
    while not stop:
        epoch, offset = divmod(state["step"], steps_per_epoch)
        order = np.random.default_rng(cfg.seed + epoch).permutation(n)  # reproducible on resume
        for b in range(offset, steps_per_epoch):
            rows = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss, tokens = sft_loss(policy, train_task, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if logger is not None:
                logger.log({"loss": loss.item(), "grad_norm": float(grad_norm),
                            "lr": scheduler.get_last_lr()[0], "tokens": tokens}, state["step"])
            last = state["step"] >= total
            if valid_task is not None and (state["step"] % eval_every == 0 or last):
                stop = validate(policy, valid_task, cfg, state, logger, run) or last
            if run is not None and (state["step"] % eval_every == 0 or last):
                save_training(run / "checkpoint", policy, optimizer, scheduler, state, asdict(cfg))
            if stop or last:
                stop = True
                break
    bar.close()
    if run is not None and (run / "best").exists():
        load_weights(policy, run / "best")
    if logger is not None:
        logger.close()
    policy.model.eval()
    return {"steps": state["step"], "best_valid": state["best"], "best_step": state["best_step"],
            "metric": cfg.metric, "seconds": round(time.time() - start_time, 2),
            "valid_history": state["history"]}


def sft_loss(policy: LLMPolicy, task: RecGenTask, rows: np.ndarray) -> tuple[torch.Tensor, int]:
    """Token-mean negative constrained log-likelihood of the target items of ``rows``."""
    responses = policy.item_responses(task.examples.target[rows])
    logp, _, mask = policy.sequence_logprobs(*task.prompt_tokens(rows), responses)
    tokens = int(mask.sum())
    return -(logp * mask).sum() / tokens, tokens
