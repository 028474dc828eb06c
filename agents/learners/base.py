"""The learner contract: what the RL loop (:func:`agents.training.rl.train_rl`) needs from a learner.

A learner turns sampled rollouts into an :class:`RLBatch` (advantages, groups) and a batch into a
scalar loss. This module imports no concrete learner; GRPO, SimPO, RISER and plug-ins subclass
:class:`Learner` and register in :mod:`agents.learners`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from agents.model.policy import LLMPolicy, Rollout
from recgym.envs.vector import RecGenVectorEnv

# -- batches ----------------------------------------------------------------------------------------


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
            # group_hit: the share of requests whose m rollouts hold at least one hit (a group with
            # none has A_i = 0 for every i: GRPO learns nothing from it)
            stats={"reward_mean": float(rollout.rewards.mean()), "hit_rate": float(hits_all.mean()),
                   "group_hit": float(hits_all.reshape(r, m).amax(dim=1).mean()),
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


# -- rollouts ----------------------------------------------------------------------------------------

ROLLOUT_MODES = ("sample", "beam")


def check_rollout_settings(config: Any) -> None:
    """Check a learner config's rollout settings: ``rollout`` mode, ``top_k`` and ``reward``.

    Example:
        >>> from agents.learners.grpo import GRPOConfig
        >>> GRPOConfig(rollout="beams")
        Traceback (most recent call last):
        ...
        ValueError: rollout='beams': choose one of ('sample', 'beam')
    """
    from recgym.rewards import check_reward

    if config.rollout not in ROLLOUT_MODES:
        raise ValueError(f"rollout={config.rollout!r}: choose one of {ROLLOUT_MODES}")
    top_k = config.top_k
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: must be an int >= 1 or None (off)")
    if top_k is not None and config.rollout == "beam":
        raise ValueError("top_k applies to sampled rollouts only: a beam group is the top G of a beam search")
    if config.reward is not None:
        check_reward(config.reward)


@torch.no_grad()
def beam_rollout(policy: LLMPolicy, envs: RecGenVectorEnv, rows: np.ndarray, width: int) -> Rollout:
    """Groups of ``width`` from one constrained beam search per request, played through the env.

    The group of request ``rows[i]`` is the top ``width`` distinct items of one beam search of that
    width under the reference scoring (:meth:`~agents.model.policy.LLMPolicy.beam_search`: full-vocabulary
    log-softmax, disallowed tokens masked, no renormalisation), in beam order, as ReRe and
    MiniOneRec roll out. Each item's tokens are then stepped through ``envs`` (a group reset of
    ``width``, so beam j is rank j of the request's list): rewards, hits and ranks come from the env
    (its ``reward`` option included). ``logprobs`` are not filled (zeros): the loop takes log pi_old
    from the update's own forward.

    Example:
        >>> # ro = beam_rollout(policy, make_rollout_env(task, 4 * 16), np.arange(4), width=16)
    """
    task = envs.task
    if envs.num_envs != len(rows) * width:
        raise ValueError(f"beam groups of {width} for {len(rows)} requests need {len(rows) * width} env "
                         f"slots, the env has {envs.num_envs}")
    prompt_ids, prompt_len = task.prompt_tokens(rows)
    terminal, _ = policy.beam_search(prompt_ids, prompt_len, width=width, k=width)
    # Fewer than `width` items exist only in tiny catalogues: repeat the best one there.
    terminal = np.where(terminal >= 0, terminal, terminal[:, :1]).reshape(-1)
    paths = task.tree.paths(terminal)
    envs.reset(options={"group_size": width, "rows": rows})
    rewards = np.zeros(envs.num_envs)
    for t in range(paths.shape[1]):  # one env step per token position, every slot at once
        _, reward, _, _, info = envs.step(np.maximum(paths[:, t], 0))
        rewards += reward
    if (info["generated_len"] != (paths >= 0).sum(axis=1)).any():
        raise RuntimeError("the env did not accept every beam item's tokens: the policy and the env "
                           "use different prefix trees")
    states = task.tree.path_states(paths)
    dev = policy.device
    ids, mask = policy.left_pad(prompt_ids, prompt_len)

    def tensor(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(a, device=dev, dtype=dtype)

    return Rollout(
        prompt_ids=ids, prompt_mask=mask, tokens=tensor(np.maximum(paths, 0)), mask=tensor(states >= 0),
        logprobs=torch.zeros(paths.shape, device=dev), states=tensor(states),
        rewards=tensor(rewards, torch.float32), hits=tensor(info["hit"]), terminal=tensor(terminal),
        rows=info["row"].copy(), targets=info["target"].copy(), group_size=width)


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
    config_class: ClassVar[type | None] = None  # the settings dataclass ``from_settings`` builds
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
    def rollout_mode(self) -> str:
        """``sample`` (constrained sampling through the env) or ``beam`` (the group is the top G of
        one constrained beam search, :func:`beam_rollout`): the config's ``rollout``."""
        return getattr(self.config, "rollout", "sample")

    @property
    def top_k(self) -> int | None:
        """Sample among the k most likely allowed tokens (None: all of them); sampled rollouts only."""
        return getattr(self.config, "top_k", None)

    @property
    def reward(self) -> str | None:
        """The env reward this learner trains on (:mod:`recgym.rewards`; None: the env's own)."""
        return getattr(self.config, "reward", None)

    @property
    def full_vocab(self) -> bool | None:
        """The config's override of the policy's objective (None: the policy's own, full by default)."""
        return getattr(self.config, "full_vocab", None)

    @classmethod
    def from_settings(cls, **settings: Any) -> Learner:
        """Build the learner from keyword settings (its ``config_class``'s fields; unknown ones fail).

        Example:
            >>> from agents.learners.grpo import GRPO
            >>> GRPO.from_settings(group_size=8).config.group_size
            8
        """
        if cls.config_class is None:
            if settings:
                raise ValueError(f"{cls.name}: takes no settings, got {sorted(settings)}")
            return cls()
        check_settings(cls.name, cls.config_class, settings)
        return cls(cls.config_class(**settings))  # type: ignore[call-arg]

    @classmethod
    def budget_settings(cls, rollouts_per_request: int, group_size: int) -> dict[str, Any]:
        """The settings that make this learner draw ``rollouts_per_request`` samples per request.

        ``group_size`` is the benchmark's n for learners that sample more than they train on
        (RISER's oversampling); others train on all ``rollouts_per_request`` samples.

        Example:
            >>> Learner.budget_settings(16, 12)
            {'group_size': 16}
        """
        return {"group_size": rollouts_per_request}

    def collect(
        self, policy: LLMPolicy, envs: RecGenVectorEnv, rows: np.ndarray, *, generator: torch.Generator,
        seed: int,
    ) -> RLBatch:
        """Roll out ``rollouts_per_request`` items per request of ``rows`` and make a batch of them:
        sampled (``rollout="sample"``, at the config's temperature and top-k) or the top G of one
        constrained beam search (``rollout="beam"``)."""
        if self.rollout_mode == "beam":
            rollout = beam_rollout(policy, envs, rows, self.rollouts_per_request)
        else:
            rollout = policy.rollout(envs, group_size=self.rollouts_per_request, rows=rows,
                                     temperature=self.temperature, top_k=self.top_k, generator=generator,
                                     seed=seed)
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

    def loss_logprobs(self, policy: LLMPolicy, batch: RLBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi, entropy) from the very forward :meth:`loss` runs: the batch's responses in rows
        ``[:B]``, then any rows the loss adds (:meth:`logprobs`' ``extra``).

        The loop takes log pi_old from it, so that before a step's first update rho = 1 exactly
        (the same rows in the same forward give the same floats). A learner whose loss adds rows
        overrides it and calls it from its loss.
        """
        return self.logprobs(policy, batch)

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


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean r) / (std r + eps) within consecutive groups of ``group_size``.

    Example:
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, eps=0.0).tolist()
        [1.5, -0.5, -0.5, -0.5]
    """
    r = rewards.reshape(-1, group_size)
    centered = r - r.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (r.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


def check_settings(name: str, config_class: type, settings: dict[str, Any]) -> None:
    """Fail on settings that are not fields of ``config_class``, naming the known ones.

    Example:
        >>> from agents.learners.grpo import GRPOConfig
        >>> check_settings("grpo", GRPOConfig, {"gropu_size": 4})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: grpo: unknown setting(s) ['gropu_size']; known: [...]
    """
    if not is_dataclass(config_class):
        return
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {unknown}; known: {sorted(known)}")


__all__ = ["ROLLOUT_MODES", "Learner", "RLBatch", "beam_rollout", "check_rollout_settings", "check_settings",
           "first_in_group", "group_advantages", "masked_mean"]
