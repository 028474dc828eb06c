"""Scaffolding that SFT and RL training share: the LR schedule, the optimizer and validation.

Both loops (:func:`agents.sft.train_sft`, :func:`agents.rl.train_rl`) build AdamW with a linear
warm-up then cosine decay (:func:`make_optimizer`), validate by constrained beam search on the
valid split and keep the best weights (:func:`validate`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from agents.evaluate import evaluate
from recgym.envs.task import RecGenTask
from recgym.metrics import KS


def warmup_cosine(warmup: int, total: int) -> Any:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0.1 at ``total``.

    Example:
        >>> f = warmup_cosine(10, 110)
        >>> f(0), f(10), round(f(110), 3)
        (0.1, 1.0, 0.1)
    """
    def factor(step: int) -> float:
        if step < warmup:
            return max(step, 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` and its warm-up + cosine schedule (:func:`warmup_cosine`).

    Example:
        >>> opt, sched = make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, 0.0, 2, 10)
        >>> sched.get_last_lr()[0]
        0.0005
    """
    optimizer = torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
    return optimizer, scheduler


def validate(
    policy: Any, task: RecGenTask, cfg: Any, state: dict[str, Any], logger: Any = None,
    run: Path | None = None,
) -> bool:
    """One validation of a training loop: evaluate, log, keep the best weights; True when patience ran out.

    ``cfg`` supplies ``beam``, ``eval_requests``, ``metric``, ``patience``, ``seed`` and ``progress``;
    ``state`` holds ``step``, ``best``, ``best_step``, ``bad_evals`` and ``history`` (and, in RL,
    ``rollouts``, logged beside the metrics) and is updated.
    The best weights go to ``<run>/best`` (atomically).

    Example:
        >>> # stop = validate(policy, valid_task, config, state, logger, Path("runs/x"))
    """
    from agents.checkpoint import write_folder_atomically

    training = policy.model.training
    policy.model.eval()
    ks = tuple(k for k in KS if k <= cfg.beam)
    metrics = evaluate(policy, task, beam=cfg.beam, ks=ks, max_requests=cfg.eval_requests, seed=cfg.seed,
                       progress=cfg.progress)
    policy.model.train(training)
    value = metrics[cfg.metric]
    state["history"].append({"step": state["step"], **{k: v for k, v in metrics.items() if "@" in k}})
    if logger is not None:  # RL runs also count rollouts, so curves can be drawn against them
        extra = {"rollouts": state["rollouts"]} if "rollouts" in state else {}
        logger.log({**{f"valid/{k}": v for k, v in metrics.items()}, **extra}, state["step"])
    if value > state["best"]:
        state.update(best=value, best_step=state["step"], bad_evals=0)
        if run is not None:
            write_folder_atomically(run / "best", policy.save_pretrained)
        return False
    state["bad_evals"] += 1
    return cfg.patience > 0 and state["bad_evals"] >= cfg.patience

