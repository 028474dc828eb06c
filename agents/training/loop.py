"""Scaffolding that SFT and RL training share: the LR schedule, the optimizer and validation.

Both loops (:func:`agents.training.sft.train_sft`, :func:`agents.training.rl.train_rl`) build AdamW with a
linear warm-up then cosine decay (:func:`make_optimizer`), validate by constrained beam search on the
valid split and keep the best weights (:func:`validate`), and shard the policy with FSDP when asked
(:func:`shard_for_training`, :mod:`agents.parallel.fsdp`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from agents.parallel import distributed as dist
from agents.parallel import fsdp
from agents.training.evaluate import evaluate
from agents.training.runs import check_policy_task
from recgym.envs.task import RecGenTask


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


@contextlib.contextmanager
def hidden_dropout(model: torch.nn.Module, p: float) -> Iterator[None]:
    """Dropout on the token embeddings and on both residual branches of every decoder block while
    the model is in training mode, for as long as the context lasts (none when ``p`` is 0).

    SASRec and TIGER regularise this way (0.1-0.5); Qwen2 / Llama configs have only attention
    dropout. Forward hooks apply it, so nothing of it is saved with the weights and rollouts, beam
    search and RL (outside the context, or in eval mode) never see it. Decoder blocks are found as
    ``model.model.layers`` with ``self_attn`` and ``mlp`` children (Qwen2, Llama, Mistral, ...);
    another layout is a ValueError.

    Example:
        >>> # with hidden_dropout(policy.model, 0.2):
        >>> #     loss.backward()   # forwards inside drop 20% of the residual branches' outputs
    """
    if p == 0:
        yield
        return
    trunk = getattr(model, "model", None)
    layers = getattr(trunk, "layers", None)
    if layers is None or not all(hasattr(b, "self_attn") and hasattr(b, "mlp") for b in layers):
        raise ValueError(f"dropout: {type(model).__name__} has no model.layers[i].self_attn / .mlp to put "
                         "dropout on; use dropout=0")

    def drop(module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if not module.training:
            return output
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (torch.nn.functional.dropout(output[0], p, True), *output[1:])
        return torch.nn.functional.dropout(output, p, True)

    modules = [trunk.get_input_embeddings()] + [m for b in layers for m in (b.self_attn, b.mlp)]
    handles = [m.register_forward_hook(drop) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
    run: Path | None = None, saved: str = "",
) -> bool:
    """One validation of a training loop: evaluate, log, keep the best weights; True when patience ran out.

    ``cfg`` supplies ``beam``, ``eval_requests``, ``metric``, ``patience``, ``seed`` and ``progress``;
    ``state`` holds ``step``, ``best``, ``best_step``, ``bad_evals`` and ``history`` (and, in RL,
    ``rollouts``, logged beside the metrics) and is updated.
    Under ``torchrun`` every rank calls it (the evaluation is a collective,
    :mod:`agents.parallel.distributed`), so every rank gets the same metrics and the same early-stop
    decision; rank 0 alone writes ``best/`` (pass ``logger`` on rank 0 only). A policy sharded by FSDP
    (:mod:`agents.parallel.fsdp`) searches with its blocks gathered whole and writes its full weights:
    the metrics and files are the same.
    The best weights go to ``<run>/best`` (atomically), never when any of them is NaN or infinite
    (a :class:`~agents.training.runs.DivergedError`; ``saved`` says which checkpoint the run keeps).

    Example:
        >>> # stop = validate(policy, valid_task, config, state, logger, Path("runs/x"))
    """
    from agents.training.checkpoint import write_folder_atomically
    from agents.training.runs import check_finite_weights

    training = policy.model.training
    policy.model.eval()
    with fsdp.gathered(policy.model):  # FSDP: whole blocks on every rank while it searches
        metrics = evaluate(policy, task, beam=cfg.beam, max_requests=cfg.eval_requests, seed=cfg.seed,
                           progress=cfg.progress)
    policy.model.train(training)
    if cfg.metric not in metrics:
        raise ValueError(f"metric={cfg.metric!r} is not computed at beam={cfg.beam}; choose one of "
                         f"{sorted(k for k in metrics if '@' in k)}")
    value = metrics[cfg.metric]
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    state["history"].append({"step": state["step"], **{k: v for k, v in numbers.items() if "@" in k}})
    if logger is not None:  # RL runs also count rollouts, so curves can be drawn against them
        extra = {"rollouts": state["rollouts"]} if "rollouts" in state else {}
        logger.log({**{f"valid/{k}": v for k, v in numbers.items()}, **extra}, state["step"])
    # A tie moves the best weights to the later (trained) ones: on a small or coarse validation a
    # strict ">" would silently keep the start. Only a strict improvement resets the patience.
    improved = value > state["best"]
    if value >= state["best"]:
        state.update(best=value, best_step=state["step"])
        if run is not None:
            check_finite_weights(policy.model, "best/", state["step"], cfg.lr, saved)
            write = policy_writer(policy)  # FSDP: every rank gathers the weights for rank 0 to write
            with dist.on_main("saving best/") as main:  # rank 0 writes; the others wait until it has
                if main:
                    write_folder_atomically(run / "best", write)
    if improved:
        state["bad_evals"] = 0
        return False
    state["bad_evals"] += 1
    return cfg.patience > 0 and state["bad_evals"] >= cfg.patience


def shard_for_training(policy: Any, requested: bool, checkpoint: Path | None = None) -> fsdp.Sharded | None:
    """Shard ``policy`` with FSDP for a training loop when ``requested`` under torchrun; else None.

    When resuming (``checkpoint``: the run's ``checkpoint/`` folder) its weights are loaded first,
    into the whole model, and the blocks are then sharded; the loop restores the optimizer after it
    is built (``restore_training(..., weights=False)``). In one process the request only warns
    (:func:`agents.parallel.fsdp.wanted`).

    Example:
        >>> shard_for_training(None, False) is None
        True
    """
    from agents.training.checkpoint import find_checkpoint, load_weights

    if not fsdp.wanted(requested, policy):
        return None
    found = find_checkpoint(checkpoint) if checkpoint is not None else None
    if found is not None:
        load_weights(policy, found)
    return fsdp.shard(policy)


def policy_writer(policy: Any) -> Callable[[Path], Any]:
    """What writes ``policy`` into a folder: ``policy.save_pretrained``, or under FSDP the same with the
    full weights gathered now (a collective: every rank calls it, then rank 0 writes).

    Example:
        >>> # write = policy_writer(policy)
        >>> # with dist.on_main("saving best/") as main:
        >>> #     if main: write_folder_atomically(run / "best", write)
    """
    full = fsdp.full_state_dict(policy.model)
    if full is None:
        return policy.save_pretrained
    return lambda path: policy.save_pretrained(path, state_dict=full)


MIN_VALID_SAMPLE = 2000


def check_training_inputs(
    policy: Any, train_task: RecGenTask, valid_task: RecGenTask | None, cfg: Any,
) -> None:
    """What SFT and RL check before anything is opened: a noisy valid sample (a warning), adapters
    under FSDP, an empty training split and a task whose catalogue is not the policy's (errors).

    ``cfg`` supplies ``eval_requests`` and ``fsdp`` (an ``SFTConfig`` or ``RLConfig``).

    Example:
        >>> # check_training_inputs(policy, train, valid, SFTConfig())   # first thing train_sft does
    """
    check_valid_sample(cfg.eval_requests, valid_task, stacklevel=4)  # names the line that called the loop
    if cfg.fsdp:
        fsdp.check(policy)  # adapters are refused before anything is opened
    if train_task.num_requests == 0:
        raise ValueError(f"the {train_task.split!r} split has no requests to train on")
    for task in (train_task, valid_task):
        if task is not None:
            check_policy_task(policy.items, task)


def check_valid_sample(eval_requests: int | None, task: RecGenTask | None, stacklevel: int = 3) -> None:
    """Warn when model selection reads a sample too small to tell checkpoints apart.

    Model selection is by the whole valid split by default; a seeded sample of fewer than
    ``MIN_VALID_SAMPLE`` requests (or the whole split, when smaller) makes HR/NDCG@10 differences of a
    few hundredths noise.

    ``stacklevel``: the frame the warning names, counted as :func:`warnings.warn` counts (3: the
    caller of the function that calls this one).

    Example:
        >>> check_valid_sample(None, None)  # the whole split: nothing to say
    """
    if task is None or eval_requests is None:
        return
    if eval_requests < min(MIN_VALID_SAMPLE, task.num_requests):
        warnings.warn(f"model selection on {eval_requests} of {task.num_requests} valid requests is noisy: "
                      f"use the whole split (--eval-requests none; eval_requests=None in Python) or at least "
                      f"{MIN_VALID_SAMPLE}", stacklevel=stacklevel)


__all__ = ["MIN_VALID_SAMPLE", "check_training_inputs", "check_valid_sample", "hidden_dropout",
           "make_optimizer", "policy_writer", "shard_for_training", "validate", "warmup_cosine"]
