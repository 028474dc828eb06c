"""One training loop under every RL learner (GRPO, SimPO, RISER, and users' own; see agents.learners).

A learner only says how to turn rollouts into a batch and a batch into a loss; the loop does the
rest, through the env's public API:

    rows    = sampler.rows(step)                               # which requests (configurable split)
    batch   = learner.collect(policy, envs, rows, ...)         # vector-env rollouts -> RLBatch
    batch.ref_logp / batch.old_logp                            # frozen reference / behaviour policy
    for _ in range(mu): for minibatch in batch.split(k):       # PPO-style passes
        loss = learner.loss(policy, minibatch); backward; clip; AdamW step
    validate every ``eval_every`` steps (beam search HR/NDCG@K on valid), keep the best weights,
    atomic checkpoint -> exact resume

Rollouts at step s are seeded by (seed, s) alone, so a resumed run repeats exactly what a straight
run does (on CPU).

Under ``torchrun`` (data parallelism, :mod:`agents.parallel.distributed`) ``sampler.rows(step)`` is the global
set of requests: it is cut into minibatches as one process cuts it, and each rank rolls out its
contiguous share of every minibatch (``minibatch_shards``) with its own rollout seed (``rank_seed``:
rank 0 keeps one process's). Each rank's loss is its share of the global minibatch's loss (the
learners normalise by global counts inside ``loss_sync``) and the gradients are summed, so the
global minibatch j is one process's minibatch j. Rank 0 alone writes the run folder; logged
numbers are averaged over ranks (rollout counts summed). ``RLConfig(fsdp=True)`` (``--fsdp``) also
shards the decoder blocks' weights, gradients and AdamW states over the ranks (:mod:`agents.parallel.fsdp`);
rollouts and validation then run with the blocks gathered whole, and the steps and files are the same.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.configs import RLConfig
from agents.learners.base import Learner, RLBatch
from agents.model.policy import LLMPolicy, make_rollout_env
from agents.parallel import distributed as dist
from agents.parallel import fsdp
from agents.training.checkpoint import load_weights, restore_training, save_training, write_folder_atomically
from agents.training.loop import check_training_inputs, make_optimizer, shard_for_training, validate
from agents.training.runs import (
    DivergedError,
    LearnerError,
    check_finite,
    check_finite_weights,
    open_run_on_main,
    run_fingerprint,
    saved_note,
)
from agents.training.tracking import MetricLogger
from recgym.envs.task import RecGenTask
from recgym.envs.vector import RecGenVectorEnv

# -- which requests ----------------------------------------------------------------------------------


class RequestSampler(Protocol):
    """Which request rows train at each step; a pure function of the step (so resuming is exact)."""

    def rows(self, step: int) -> np.ndarray: ...


class EpochSampler:
    """Shuffled passes over a pool of request rows, ``batch_size`` at a time (a new order per epoch).

    Example:
        >>> s = EpochSampler(np.arange(10), batch_size=4, seed=0)
        >>> first_epoch = np.concatenate([s.rows(0), s.rows(1), s.rows(2)[:2]])
        >>> sorted(first_epoch.tolist()) == list(range(10))
        True
    """

    def __init__(self, pool: np.ndarray | int, batch_size: int, seed: int = 0) -> None:
        self.pool = np.arange(pool) if isinstance(pool, int) else np.asarray(pool)
        if len(self.pool) == 0:
            raise ValueError("the request pool is empty")
        self.batch_size = batch_size
        self.seed = seed

    def rows(self, step: int) -> np.ndarray:
        n = len(self.pool)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = np.divmod(positions, n)
        out = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):  # at most a few epochs per batch
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            here = epochs == epoch
            out[here] = self.pool[order[offsets[here]]]
        return out


# -- the loop ----------------------------------------------------------------------------------------


def train_rl(
    policy: LLMPolicy,
    learner: Learner,
    train_task: RecGenTask,
    valid_task: RecGenTask | None = None,
    config: RLConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    sampler: RequestSampler | None = None,
    *,
    restart: bool = False,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``policy`` with ``learner`` on ``train_task``'s requests; returns a summary.

    With ``run_dir``: ``metrics.jsonl`` (and TensorBoard), ``checkpoint/`` (resumed from when
    present), ``best/`` (best validation weights, loaded into the policy at the end),
    ``reference/`` (the frozen starting policy, when the learner needs one) and
    ``fingerprint.json``. A folder holding a run with another fingerprint (config, learner, data,
    sampler, starting weights, plus ``run_info`` from the caller) is refused unless ``restart``,
    which starts over there (:mod:`agents.training.runs`); the folder is locked while the run uses it.
    A non-finite loss or gradient norm stops training with a :class:`~agents.training.runs.DivergedError`
    before anything non-finite is saved.

    Under ``torchrun`` every rank calls it with the same arguments (module docstring); each step needs
    at least one request per rank in every minibatch (``requests_per_step >= world size x
    minibatches``), else a ValueError says so on every rank.

    Example:
        >>> # summary = train_rl(policy, make_learner("riser"), train, valid, RLConfig(steps=50), "runs/r")
    """
    cfg = config or RLConfig()
    check_training_inputs(policy, train_task, valid_task, cfg)
    if run_dir is None:
        return _train_rl(policy, learner, train_task, valid_task, cfg, None, sampler, False)
    run = Path(run_dir)
    fingerprint = run_fingerprint("rl", cfg, train_task, valid_task, policy=policy, learner=learner,
                                  sampler=sampler, extra=run_info)
    with open_run_on_main(run, fingerprint, restart=restart) as resuming:
        return _train_rl(policy, learner, train_task, valid_task, cfg, run, sampler, resuming)


def _train_rl(
    policy: LLMPolicy, learner: Learner, train_task: RecGenTask, valid_task: RecGenTask | None, cfg: RLConfig,
    run: Path | None, sampler: RequestSampler | None, resuming: bool,
) -> dict[str, Any]:
    sampler = sampler or EpochSampler(train_task.num_requests, cfg.requests_per_step, cfg.seed)
    # This rank's requests per step (all of them in one process); too few per rank is an error here.
    local_requests = sum(len(p) for p in dist.minibatch_shards(cfg.requests_per_step, cfg.minibatches))
    # The learner's reward (e.g. ReRe's ranking reward) is an env option: its rollout env pays it.
    rollout_task = train_task.with_reward(learner.reward) if learner.reward else train_task
    envs = make_rollout_env(rollout_task, local_requests * learner.rollouts_per_request, cfg.env_id)
    torch.manual_seed(cfg.seed)
    main = dist.is_main()
    dist.broadcast_parameters(policy.model)  # every rank starts from rank 0's weights (as DDP does)
    reference = _reference(policy, run) if learner.needs_reference else None  # the start, unsharded
    # FSDP (--fsdp under torchrun): the checkpoint's weights are loaded, then the blocks sharded.
    sharding = shard_for_training(policy, cfg.fsdp, run / "checkpoint" if resuming else None)
    params = policy.trainable_parameters()
    optimizer, scheduler = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps)
    restored = (restore_training(run / "checkpoint", policy, optimizer, scheduler, weights=sharding is None)
                if resuming else None)
    state: dict[str, Any] = restored or {"step": 0, "best": -1.0, "best_step": 0, "bad_evals": 0,
                                         "history": [], "rollouts": 0}
    saved_step = state["step"] if restored is not None else None
    if restored is not None and cfg.progress and main:
        print(f"resuming {run} from step {state['step']} (--restart starts over)", file=sys.stderr)
    logger = (MetricLogger(run, from_step=state["step"] + 1 if restored else 0)
              if run is not None and main else None)
    start_time = time.time()
    policy.model.train()
    bar = None
    try:
        if valid_task is not None and restored is None:  # the starting point (e.g. the SFT policy)
            validate(policy, valid_task, cfg, state, logger, run)
        bar = tqdm(total=cfg.steps, initial=state["step"], desc=learner.name,
                   disable=not cfg.progress or not main)
        stop = False
        while state["step"] < cfg.steps and not stop:
            step = state["step"]
            tick = time.time()
            record = _train_step(policy, learner, envs, sampler.rows(step), reference, optimizer, params, cfg,
                                 step, saved_note(run, saved_step))
            scheduler.step()
            state["step"] += 1
            state["rollouts"] += int(record.pop("rollouts"))
            record.update(lr=scheduler.get_last_lr()[0], rollouts=state["rollouts"],
                          step_seconds=round(time.time() - tick, 3))
            bar.update(1)
            bar.set_postfix(hit=f"{record['hit_rate']:.3f}", group_hit=f"{record.get('group_hit', 0):.3f}",
                            ent=f"{record.get('entropy', 0):.2f}")
            if logger is not None:
                logger.log(record, state["step"])
            last = state["step"] >= cfg.steps
            due = cfg.eval_every and state["step"] % cfg.eval_every == 0
            if valid_task is not None and (due or last):
                stop = validate(policy, valid_task, cfg, state, logger, run, saved_note(run, saved_step))
            if run is not None and (due or last or stop):
                saved = saved_note(run, saved_step)
                check_finite_weights(policy.model, "checkpoint/", state["step"], cfg.lr, saved)
                full = fsdp.full_state_dict(policy.model)  # FSDP: gathered for rank 0 (else None)
                moments = fsdp.full_optimizer_state(optimizer)
                with dist.on_main("saving checkpoint/") as writing:
                    if writing:
                        save_training(run / "checkpoint", policy, optimizer, scheduler, state,
                                      {"rl": asdict(cfg), "learner": learner.describe()}, model_state=full,
                                      optimizer_state=moments)
                saved_step = state["step"]
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    if sharding is not None:
        sharding.restore()  # an ordinary model again, with the trained weights, on every rank
    if run is not None and (run / "best").exists():
        load_weights(policy, run / "best")
    policy.model.eval()
    return {"learner": learner.describe(), "steps": state["step"], "rollouts": state["rollouts"],
            "best_valid": state["best"], "best_step": state["best_step"], "metric": cfg.metric,
            "seconds": round(time.time() - start_time, 2), "valid_history": state["history"]}


def _train_step(
    policy: LLMPolicy, learner: Learner, envs: RecGenVectorEnv, rows: np.ndarray, reference: LLMPolicy | None,
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], cfg: RLConfig, step: int,
    saved: str = "",
) -> dict[str, float]:
    """Rollouts, then mu x minibatches optimizer steps; returns the step's numbers.

    ``rows`` are the step's global requests; this rank rolls out its share of each minibatch
    (:func:`~agents.parallel.distributed.minibatch_shards`) with seed ``rank_seed(seed * 1_000_003 + step)``.
    Stops with :class:`~agents.training.runs.DivergedError` (before the optimizer step) at a non-finite loss
    or gradient norm, and when the policy's sampling distribution is no longer finite.
    """
    tick = time.time()
    shards = dist.minibatch_shards(len(rows), cfg.minibatches)  # this rank's groups of each minibatch
    seed = dist.rank_seed(cfg.seed * 1_000_003 + step)
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    # FSDP: whole blocks on every rank while it samples and scores (no per-forward collectives)
    with fsdp.gathered(policy.model):
        try:
            batch = learner.collect(policy, envs, rows[np.concatenate(shards)], generator=generator,
                                    seed=seed)
        except RuntimeError as err:  # torch.multinomial on NaN / inf probabilities: the weights diverged
            if "inf" not in str(err) and "nan" not in str(err):
                raise
            raise DivergedError("sampling distribution", math.nan, step + 1, cfg.lr, saved) from err
        rollout_seconds = time.time() - tick
        with torch.no_grad():
            if reference is not None:
                batch.ref_logp = learner.logprobs(reference, batch)[0]
        ends = np.cumsum([len(p) for p in shards])
        # This rank's part of each global minibatch (in one process: exactly batch.split(cfg.minibatches)).
        minibatches = [batch.select_groups(np.arange(end - len(p), end)) for p, end in zip(shards, ends)]
        if learner.needs_old_logprobs and cfg.mu * cfg.minibatches > 1:
            # log pi_old minibatch by minibatch from the forward the loss runs (loss_logprobs): before
            # the first update rho = 1 and |log pi - log pi_old| = 0 exactly, not float noise (~5e-7
            # from another batch shape) whose sign would steer KL-Cov's gradient.
            with torch.no_grad():
                for minibatch in minibatches:
                    b, t = minibatch.responses.shape
                    minibatch.old_logp = learner.loss_logprobs(policy, minibatch)[0][:b, :t]
    sums = update(policy, learner, minibatches, optimizer, params, cfg, step, saved)
    rewards = batch.group_rewards()
    record = {key: value / (cfg.mu * len(minibatches)) for key, value in sums.items()}
    record.update(batch.stats)
    record["zero_adv_frac"] = float((rewards.max(dim=1).values == rewards.min(dim=1).values).float().mean())
    tokens = dist.all_sum(float(batch.mask.sum()))  # trained tokens of the global batch
    record["tokens_per_s"] = tokens / max(time.time() - tick, 1e-9)
    record["rollout_seconds"] = round(rollout_seconds, 3)
    rollouts = dist.all_sum(float(record.pop("rollouts", 0)))
    record = dist.mean_over_ranks(record)
    record["rollouts"] = int(rollouts)
    return record


def update(
    policy: LLMPolicy, learner: Learner, minibatches: list[RLBatch], optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter], cfg: RLConfig, step: int, saved: str = "",
) -> dict[str, float]:
    """``cfg.mu`` passes of one optimizer step per minibatch; returns the sums of the logged numbers.

    Under ``torchrun`` each rank passes its share of every global minibatch: the loss runs inside
    :func:`~agents.parallel.distributed.loss_sync` (the learner normalises by the global minibatch's counts)
    and the gradients are summed over ranks before clipping, so every rank takes the step one
    process takes on the global minibatch. ``loss`` is the global minibatch's loss; the learner's
    own numbers are this rank's.

    Example:
        >>> # sums = update(policy, learner, batch.split(4), optimizer, params, RLConfig(), step=0)
    """
    sums: dict[str, float] = {}
    for _ in range(cfg.mu):
        for minibatch in minibatches:
            with dist.loss_sync():
                loss, stats = checked_loss(learner, learner.loss(policy, minibatch))
            loss_value = dist.all_sum(float(loss.detach()))  # the same number on every rank
            check_finite(loss_value, "loss", step + 1, cfg.lr, saved)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.sum_gradients(params)
            grad_norm = dist.clip_grad_norm(params, cfg.grad_clip)  # the global norm, also under FSDP
            check_finite(float(grad_norm), "gradient norm", step + 1, cfg.lr, saved)
            optimizer.step()
            for key, value in {"loss": loss_value, "grad_norm": float(grad_norm), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value
    return sums


def checked_loss(learner: Learner, out: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """``learner.loss``'s ``out`` if it is ``(scalar tensor with a gradient, dict)``, else a
    :class:`~agents.training.runs.LearnerError` (a TypeError) naming the learner and what it must return.

    Example:
        >>> from agents.learners.grpo import GRPO
        >>> checked_loss(GRPO(), (0.5, {}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        agents.training.runs.LearnerError: learner 'grpo' (agents.learners.grpo.GRPO): loss() must return ...
    """
    if isinstance(out, tuple):
        got = "(" + ", ".join(type(x).__name__ for x in out) + ")"
    else:
        got = type(out).__name__
    problem = None
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)
            and isinstance(out[1], dict)):
        problem = f"got {got}"
    elif out[0].numel() != 1:
        problem = f"got a tensor of shape {tuple(out[0].shape)}"
    elif not out[0].requires_grad:
        problem = "got a tensor without a gradient (detached, or computed under torch.no_grad())"
    if problem is not None:
        kind = type(learner)
        name = getattr(learner, "name", kind.__name__)
        raise LearnerError(
            f"learner {name!r} ({kind.__module__}.{kind.__qualname__}): loss() must return (a scalar "
            f"torch.Tensor that carries the gradient, a dict of numbers to log), {problem}: fix the "
            "learner's loss (a plug-in's: its file)")
    return out


def _reference(policy: LLMPolicy, run: Path | None) -> LLMPolicy:
    """A frozen copy of the starting policy; saved in ``<run>/reference`` so a resumed run keeps it.

    Rank 0 writes it; every rank reads it after (the same frozen weights everywhere).
    """
    reference = copy.deepcopy(policy)
    if run is not None:
        saved = (run / "reference").exists()  # written atomically: present means complete
        with dist.on_main("saving reference/") as main:
            if main and not saved:
                write_folder_atomically(run / "reference", policy.save_pretrained)
        if saved or not main:  # rank 0's copy is already these weights
            load_weights(reference, run / "reference")
    reference.model.eval()
    reference.model.requires_grad_(False)
    return reference


__all__ = ["EpochSampler", "RLConfig", "RequestSampler", "checked_loss", "train_rl"]
