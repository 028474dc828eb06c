"""One training loop under every RL learner (GRPO, SimPO, RISER, and users' own).

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
"""

from __future__ import annotations

import copy
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.checkpoint import load_weights, restore_training, save_training, write_folder_atomically
from agents.evaluate import validate
from agents.policy import LLMPolicy, Rollout, make_rollout_env
from agents.sft import warmup_cosine
from agents.tracking import MetricLogger
from recgym.envs.task import RecGenTask
from recgym.envs.vector import RecGenVectorEnv

# -- batches -----------------------------------------------------------------------------------------


@dataclass
class RLBatch:
    """Rollouts of R requests in groups, as learners consume them (tensors on the policy's device).

    Response b belongs to group ``group_index[b]`` (its request's prompt row); groups are
    consecutive blocks. Group-level fields have R rows, response-level fields B rows.

    Attributes:
        prompt_ids, prompt_mask: (R, P) left-padded prompts.
        group_index: (B,) prompt row of each response.
        responses: (B, T) generated tokens, -1 on padding; ``mask`` (B, T) real tokens;
            ``states`` (B, T) the tree node each token was generated from (-1 on padding).
        rewards, hits: (B,); ``terminal``: (B,) the item node reached; ``advantages``: (B,) A_i
            (None until a learner sets them).
        rows, targets: (R,) numpy request rows and target items.
        chosen: (R, Tc) the target item's tokens (-1 padded), for preference losses.
        unique: (R,) distinct items among the request's sampled rollouts.
        old_logp, ref_logp: (B, T) behaviour / reference log-probs once the loop fills them.
        stats: numbers about the whole batch to log (reward mean, hit rate, ...).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    group_index: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    states: torch.Tensor
    rewards: torch.Tensor
    hits: torch.Tensor
    terminal: torch.Tensor
    rows: np.ndarray
    targets: np.ndarray
    chosen: torch.Tensor
    unique: torch.Tensor
    advantages: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_rollout(cls, policy: LLMPolicy, rollout: Rollout, select: np.ndarray, n: int) -> RLBatch:
        """Rows ``select`` of ``rollout`` (R groups of n, in request order) as a batch.

        Example:
            >>> # batch = RLBatch.from_rollout(policy, ro, np.arange(len(ro.rows)), ro.group_size)
        """
        m = rollout.group_size
        r = len(rollout.rows) // m
        if len(select) != r * n:
            raise ValueError(f"select has {len(select)} rows; {r} groups of {n} need {r * n}")
        dev = rollout.tokens.device
        sel = torch.as_tensor(select, device=dev)
        mask = rollout.mask[sel]
        hits_all = rollout.hits.float()
        rollout_groups = torch.arange(r, device=dev).repeat_interleave(m)
        unique = first_in_group(rollout.terminal, rollout_groups).reshape(r, m).sum(dim=1)
        targets = rollout.targets[::m]
        return cls(
            prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask,
            group_index=torch.arange(r, device=dev).repeat_interleave(n),
            responses=torch.where(mask, rollout.tokens[sel], -1), mask=mask, states=rollout.states[sel],
            rewards=rollout.rewards[sel], hits=rollout.hits[sel], terminal=rollout.terminal[sel],
            rows=rollout.rows[::m], targets=targets,
            chosen=torch.as_tensor(policy.item_responses(targets), device=dev), unique=unique,
            stats={"reward_mean": float(rollout.rewards.mean()), "hit_rate": float(hits_all.mean()),
                   "unique_per_group": float(unique.float().mean()), "rollouts": len(rollout.rows)},
        )

    @property
    def num_groups(self) -> int:
        return len(self.prompt_ids)

    @property
    def group_size(self) -> int:
        return len(self.responses) // self.num_groups

    def group_rewards(self) -> torch.Tensor:
        """(R, n) rewards."""
        return self.rewards.reshape(self.num_groups, -1)

    def split(self, parts: int) -> list[RLBatch]:
        """Minibatches of whole groups (``parts`` at most), for several optimizer steps per batch."""
        chunks = np.array_split(np.arange(self.num_groups), min(parts, self.num_groups))
        return [self.select_groups(c) for c in chunks if len(c)]

    def select_groups(self, groups: np.ndarray) -> RLBatch:
        """The sub-batch of groups ``groups`` (their prompts, responses and per-token tensors)."""
        dev = self.responses.device
        g = torch.as_tensor(groups, device=dev)
        n = self.group_size
        resp = (g[:, None] * n + torch.arange(n, device=dev)).reshape(-1)
        per_row = {f.name: getattr(self, f.name)[resp] for f in fields(self)
                   if f.name in _ROW_FIELDS and getattr(self, f.name) is not None}
        width = int(per_row["mask"].sum(dim=1).max()) if len(resp) else 0
        for name in _TOKEN_FIELDS:
            if name in per_row:
                per_row[name] = per_row[name][:, :width]
        return replace(
            self, prompt_ids=self.prompt_ids[g], prompt_mask=self.prompt_mask[g],
            group_index=torch.arange(len(groups), device=dev).repeat_interleave(n),
            rows=self.rows[groups], targets=self.targets[groups], chosen=self.chosen[g],
            unique=self.unique[g], stats=dict(self.stats), **per_row)


_TOKEN_FIELDS = ("responses", "mask", "states", "old_logp", "ref_logp")
_ROW_FIELDS = (*_TOKEN_FIELDS, "rewards", "hits", "terminal", "advantages")


# -- learners ----------------------------------------------------------------------------------------


class Learner(ABC):
    """What the training loop needs from a learner; subclass it to plug in a new one.

    A learner collects an :class:`RLBatch` through the vector env (:meth:`collect`, by default
    ``rollouts_per_request`` samples per request then :meth:`make_batch`) and turns a (mini)batch
    into a scalar loss plus numbers to log (:meth:`loss`).

    Example:
        >>> class Reinforce(Learner):
        ...     name = "reinforce"
        ...     def make_batch(self, policy, rollout):
        ...         batch = RLBatch.from_rollout(policy, rollout, np.arange(len(rollout.rows)), 4)
        ...         batch.advantages = batch.rewards - batch.rewards.mean()
        ...         return batch
        ...     def loss(self, policy, batch):
        ...         logp, _ = self.logprobs(policy, batch)
        ...         return -(batch.advantages[:, None] * logp * batch.mask).sum() / batch.mask.sum(), {}
        >>> Reinforce().rollouts_per_request
        4
    """

    name: str = "learner"
    config: Any = None  # a dataclass of settings (group_size, temperature, full_vocab, ...), if any
    needs_reference: bool = False  # keep a frozen copy of the starting policy (ref_logp)
    needs_old_logprobs: bool = True  # fill old_logp when the policy moves within a batch

    @property
    def rollouts_per_request(self) -> int:
        """Samples drawn per request (the config's ``group_size``; 4 without a config)."""
        return getattr(self.config, "group_size", 4)

    @property
    def temperature(self) -> float:
        """Sampling temperature, used by the update too."""
        return getattr(self.config, "temperature", 1.0)

    @property
    def full_vocab(self) -> bool:
        """Normalise the update's log-probs over the whole vocabulary instead of the allowed tokens."""
        return getattr(self.config, "full_vocab", False)

    def collect(
        self, policy: LLMPolicy, envs: RecGenVectorEnv, rows: np.ndarray, *, generator: torch.Generator,
        seed: int,
    ) -> RLBatch:
        """Sample ``rollouts_per_request`` items per request of ``rows`` and make a batch of them."""
        rollout = policy.rollout(envs, group_size=self.rollouts_per_request, rows=rows,
                                 temperature=self.temperature, generator=generator, seed=seed)
        return self.make_batch(policy, rollout)

    @abstractmethod
    def make_batch(self, policy: LLMPolicy, rollout: Rollout) -> RLBatch:
        """Turn sampled rollouts into the batch the loss reads (advantages, groups, ...)."""

    @abstractmethod
    def loss(self, policy: LLMPolicy, batch: RLBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of a (mini)batch, with gradients, and numbers to log."""

    def logprobs(
        self, policy: LLMPolicy, batch: RLBatch, extra: torch.Tensor | None = None,
        extra_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced (log pi, entropy) of the batch's responses with the shared prompt.

        ``extra`` responses (e.g. the chosen items of a preference loss) with their prompt rows
        ``extra_index`` ride in the same forward; their rows follow the batch's.
        """
        responses, index = batch.responses, batch.group_index
        if extra is not None:
            width = max(responses.shape[1], extra.shape[1])
            responses = torch.cat([_pad_to(responses, width), _pad_to(extra, width)])
            index = torch.cat([index, extra_index])
        logp, entropy, _ = policy.group_logprobs(batch.prompt_ids, batch.prompt_mask, responses, index,
                                                 self.temperature, full_vocab=self.full_vocab)
        return logp, entropy

    def describe(self) -> dict[str, Any]:
        """Name and settings, for results files."""
        return {"name": self.name, **(asdict(self.config) if self.config is not None else {})}


def _pad_to(tokens: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]), value=-1)


def first_in_group(terminal: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """True for the first response of each distinct item within its group (rollout order).

    Example:
        >>> first_in_group(torch.tensor([4, 4, 7, 4, 7]), torch.tensor([0, 0, 0, 1, 1])).tolist()
        [True, False, True, True, True]
    """
    key = group_index * (int(terminal.max()) + 2) + terminal + 1
    _, inverse = torch.unique(key, return_inverse=True)
    positions = torch.arange(len(key), device=key.device)
    first = torch.full((int(inverse.max()) + 1,), len(key), device=key.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first[inverse] == positions


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` over ``mask`` as a float (0 when the mask is empty).

    Example:
        >>> masked_mean(torch.tensor([1.0, 3.0, 9.0]), torch.tensor([True, True, False]))
        2.0
    """
    return float((values * mask).sum() / mask.sum().clamp(min=1))


LearnerFactory = Callable[..., Learner]
"""``factory(**settings) -> Learner``: how a plug-in learner is built from settings (e.g. ``group_size``)."""

BUILTIN_LEARNERS = ("grpo", "simpo", "riser")
_PLUGIN_LEARNERS: dict[str, LearnerFactory] = {}


def register_learner(name: str, factory: LearnerFactory) -> None:
    """Make a learner available by name to :func:`make_learner` and so to ``recgym bench``.

    A plug-in module calls this when imported (``recgym bench --plugin my_learner.py``), so user code
    adds a learner without editing the package. ``factory(**settings)`` must return a
    :class:`Learner`; the bench passes ``group_size`` (rollouts per request, its rollout budget).

    Example:
        >>> class Mine(Learner):
        ...     name = "mine"
        ...     def make_batch(self, policy, rollout): ...
        ...     def loss(self, policy, batch): ...
        >>> register_learner("mine", lambda **settings: Mine())
        >>> make_learner("mine").name
        'mine'
        >>> register_learner("mine", lambda **settings: Mine())
        Traceback (most recent call last):
        ...
        ValueError: a learner named 'mine' is already registered
        >>> unregister_learner("mine")
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"learner names are letters, digits, '_' and '-', got {name!r}")
    if name in BUILTIN_LEARNERS or name in _PLUGIN_LEARNERS:
        raise ValueError(f"a learner named {name!r} is already registered")
    if not callable(factory):
        raise TypeError(f"the factory of learner {name!r} must be callable, got {type(factory).__name__}")
    _PLUGIN_LEARNERS[name] = factory


def unregister_learner(name: str) -> None:
    """Forget a registered plug-in learner (built-in learners stay).

    Example:
        >>> unregister_learner("grpo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 'grpo' is not a registered plug-in learner; registered: [...]
    """
    if name not in _PLUGIN_LEARNERS:
        raise ValueError(f"{name!r} is not a registered plug-in learner; "
                         f"registered: {sorted(_PLUGIN_LEARNERS)}")
    del _PLUGIN_LEARNERS[name]


def learner_names() -> list[str]:
    """Names :func:`make_learner` knows: the built-in learners, then registered plug-ins.

    Example:
        >>> learner_names()[:3]
        ['grpo', 'simpo', 'riser']
    """
    return [*BUILTIN_LEARNERS, *_PLUGIN_LEARNERS]


def make_learner(name: str, **overrides: Any) -> Learner:
    """A learner by name (built-in ``grpo``, ``simpo``, ``riser`` or a registered plug-in) with settings.

    Example:
        >>> make_learner("riser", group_size=8, oversample=12).config.oversample
        12
    """
    if name in _PLUGIN_LEARNERS:
        learner = _PLUGIN_LEARNERS[name](**overrides)
        if not isinstance(learner, Learner):
            raise TypeError(f"the factory of learner {name!r} returned {type(learner).__name__}, "
                            "not a Learner")
        return learner
    from agents.grpo import GRPO, GRPOConfig
    from agents.riser import RISER, RISERConfig
    from agents.simpo import SimPO, SimPOConfig

    table: dict[str, tuple[type, type]] = {"grpo": (GRPO, GRPOConfig), "simpo": (SimPO, SimPOConfig),
                                           "riser": (RISER, RISERConfig)}
    if name not in table:
        raise ValueError(f"unknown learner {name!r}: choose one of {learner_names()}")
    learner_cls, config_cls = table[name]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return learner_cls(config_cls(**overrides))


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


@dataclass
class RLConfig:
    """Settings of :func:`train_rl` shared by every learner (defaults suit the offline presets on CPU).

    Args:
        steps: batches of rollouts (one per step).
        requests_per_step: distinct requests per batch (each gets the learner's group of rollouts).
        lr, weight_decay: AdamW; linear warm-up over ``warmup_steps``, then cosine decay to 0.1 x.
        grad_clip: max gradient norm.
        mu: optimizer passes over each batch of rollouts.
        minibatches: optimizer steps per pass (the batch's groups split evenly); with mu * minibatches
            > 1 the behaviour policy's log-probs are stored and the clip (and KL-Cov) act.
        eval_every: steps between validations (0: only at the start and the end).
        eval_requests, beam, metric, patience: validation sample, beam width, the metric that picks
            the best weights, evaluations without improvement before stopping (0: never).
        seed: request order, rollouts and initialisation.
        progress: progress bars.
    """

    steps: int = 100
    requests_per_step: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    grad_clip: float = 1.0
    mu: int = 1
    minibatches: int = 2
    eval_every: int = 25
    eval_requests: int | None = 256
    beam: int = 20
    metric: str = "HR@10"
    patience: int = 0
    seed: int = 0
    progress: bool = True


def train_rl(
    policy: LLMPolicy,
    learner: Learner,
    train_task: RecGenTask,
    valid_task: RecGenTask | None = None,
    config: RLConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    sampler: RequestSampler | None = None,
) -> dict[str, Any]:
    """Train ``policy`` with ``learner`` on ``train_task``'s requests; returns a summary.

    With ``run_dir``: ``metrics.jsonl`` (and TensorBoard), ``checkpoint/`` (resumed from when
    present), ``best/`` (best validation weights, loaded into the policy at the end) and
    ``reference/`` (the frozen starting policy, when the learner needs one).

    Example:
        >>> # summary = train_rl(policy, make_learner("riser"), train, valid, RLConfig(steps=50), "runs/r")
    """
    cfg = config or RLConfig()
    if train_task.num_requests == 0:
        raise ValueError(f"the {train_task.split!r} split has no requests to train on")
    sampler = sampler or EpochSampler(train_task.num_requests, cfg.requests_per_step, cfg.seed)
    envs = make_rollout_env(train_task, cfg.requests_per_step * learner.rollouts_per_request)
    torch.manual_seed(cfg.seed)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.steps))
    run = Path(run_dir) if run_dir is not None else None
    logger = MetricLogger(run) if run is not None else None
    reference = _reference(policy, run) if learner.needs_reference else None
    restored = restore_training(run / "checkpoint", policy, optimizer, scheduler) if run is not None else None
    state: dict[str, Any] = restored or {"step": 0, "best": -1.0, "best_step": 0, "bad_evals": 0,
                                         "history": [], "rollouts": 0}
    start_time = time.time()
    policy.model.train()
    if valid_task is not None and restored is None:  # the starting point (e.g. the SFT policy)
        validate(policy, valid_task, cfg, state, logger, run)
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=learner.name, disable=not cfg.progress)
    stop = False
    while state["step"] < cfg.steps and not stop:
        step = state["step"]
        tick = time.time()
        record = _train_step(policy, learner, envs, sampler.rows(step), reference, optimizer, params, cfg,
                             step)
        scheduler.step()
        state["step"] += 1
        state["rollouts"] += int(record.pop("rollouts"))
        record.update(lr=scheduler.get_last_lr()[0], rollouts=state["rollouts"],
                      step_seconds=round(time.time() - tick, 3))
        bar.update(1)
        bar.set_postfix(hit=f"{record['hit_rate']:.3f}", ent=f"{record.get('entropy', 0):.2f}")
        if logger is not None:
            logger.log(record, state["step"])
        last = state["step"] >= cfg.steps
        due = cfg.eval_every and state["step"] % cfg.eval_every == 0
        if valid_task is not None and (due or last):
            stop = validate(policy, valid_task, cfg, state, logger, run)
        if run is not None and (due or last or stop):
            save_training(run / "checkpoint", policy, optimizer, scheduler, state,
                          {"rl": asdict(cfg), "learner": learner.describe()})
    bar.close()
    if run is not None and (run / "best").exists():
        load_weights(policy, run / "best")
    if logger is not None:
        logger.close()
    policy.model.eval()
    return {"learner": learner.describe(), "steps": state["step"], "rollouts": state["rollouts"],
            "best_valid": state["best"], "best_step": state["best_step"], "metric": cfg.metric,
            "seconds": round(time.time() - start_time, 2), "valid_history": state["history"]}


def _train_step(
    policy: LLMPolicy, learner: Learner, envs: RecGenVectorEnv, rows: np.ndarray, reference: LLMPolicy | None,
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], cfg: RLConfig, step: int,
) -> dict[str, float]:
    """Rollouts, then mu x minibatches optimizer steps; returns the step's numbers."""
    tick = time.time()
    generator = torch.Generator(device=policy.device).manual_seed(cfg.seed * 1_000_003 + step)
    batch = learner.collect(policy, envs, rows, generator=generator, seed=cfg.seed * 1_000_003 + step)
    rollout_seconds = time.time() - tick
    with torch.no_grad():
        if reference is not None:
            batch.ref_logp = learner.logprobs(reference, batch)[0]
        if learner.needs_old_logprobs and cfg.mu * cfg.minibatches > 1:
            batch.old_logp = learner.logprobs(policy, batch)[0]
    sums: dict[str, float] = {}
    updates = 0
    for _ in range(cfg.mu):
        for minibatch in batch.split(cfg.minibatches):
            loss, stats = learner.loss(policy, minibatch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            for key, value in {"loss": float(loss.detach()), "grad_norm": float(grad_norm), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value
            updates += 1
    rewards = batch.group_rewards()
    record = {key: value / updates for key, value in sums.items()}
    record.update(batch.stats)
    record["zero_adv_frac"] = float((rewards.max(dim=1).values == rewards.min(dim=1).values).float().mean())
    record["tokens_per_s"] = float(batch.mask.sum()) / max(time.time() - tick, 1e-9)  # trained tokens
    record["rollout_seconds"] = round(rollout_seconds, 3)
    return record


def _reference(policy: LLMPolicy, run: Path | None) -> LLMPolicy:
    """A frozen copy of the starting policy; saved in ``<run>/reference`` so a resumed run keeps it."""
    reference = copy.deepcopy(policy)
    if run is not None:
        if (run / "reference").exists():
            load_weights(reference, run / "reference")
        else:
            write_folder_atomically(run / "reference", policy.save_pretrained)
    reference.model.eval()
    reference.model.requires_grad_(False)
    return reference


__all__ = ["BUILTIN_LEARNERS", "EpochSampler", "Learner", "LearnerFactory", "RLBatch", "RLConfig",
           "RequestSampler", "first_in_group", "learner_names", "make_learner", "masked_mean",
           "register_learner", "train_rl", "unregister_learner"]
