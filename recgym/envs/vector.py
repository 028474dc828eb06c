"""A natively batched RecGen vector env: one shared tree, array state, no per-env objects in step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from recgym._checks import check_bool, check_int, check_options, int_array
from recgym.envs.recgen import observation_space
from recgym.envs.task import RecGenTask, Request, resolve_task
from recgym.rewards import GROUP_REWARDS, rank_penalties
from recgym.tree import MaskBuffer

AUTORESET_MODES = {"next_step": AutoresetMode.NEXT_STEP, "disabled": AutoresetMode.DISABLED}
VECTOR_RESET_OPTIONS = ("reset_mask", "requests", "group_size", "rows")
"""The keys :meth:`RecGenVectorEnv.reset` understands; any other key is an error listing these."""


class RecGenVectorEnv(VectorEnv):
    """``num_envs`` RecGen episodes stepped together with batched numpy operations.

    Registered as the ``vector_entry_point`` of every RecGen id::

        envs = gym.make_vec("RecGen-Synthetic-v0", num_envs=64,
                            vectorization_mode="vector_entry_point", autoreset_mode="disabled")

    State is a few arrays (tree node, tokens generated, request row per slot); every step is one
    ``PrefixTree.step`` over the batch, one vectorized reward and one batched observation.

    **Groups (GRPO).** ``reset(options={"group_size": n})`` fills the slots with ``num_envs / n``
    requests, each repeated in ``n`` consecutive slots. ``options={"rows": [...]}`` picks the
    requests (``num_envs`` rows, or ``num_envs / group_size`` rows with ``group_size``).
    ``options={"requests": [(history, target), ...]}`` plays requests of your own (not together
    with ``rows`` or ``group_size``). Any other key, and values that are not ints (``rows`` of
    floats, ``group_size=2.7``), are errors naming the option, raised before any slot changes.

    **Ranked lists (rewards).** Slot j of a group is rank j of its request's list (``info["rank"]``);
    other slots are lists of one. The task's ``reward`` (:mod:`recgym.rewards`) is paid when a slot's
    episode ends; ``reward="ranking"`` (ReRe's) adds its list part to every slot of a list on the step
    the list's last slot ends (needs ``autoreset_mode="disabled"`` for groups).

    **Episodes end independently.** ``autoreset_mode="next_step"`` (Gymnasium's default): a slot
    that terminated is reset on the next ``step`` (its action is ignored, reward 0).
    ``autoreset_mode="disabled"`` (what learners want): a finished slot stays finished, its actions
    are ignored, its reward is 0 and ``terminated`` stays True until ``reset()`` (or
    ``reset(options={"reset_mask": m})`` for some slots). ``info["active"]`` marks the slots whose
    action this step used, so learners skip the rest.

    **Masks.** With ``dense_masks=True`` ``info["action_mask"]`` is a fresh (num_envs, vocab_size)
    int8 array; ``dense_masks="reuse"`` returns the same array every time, rewritten in place (a
    :class:`~recgym.tree.MaskBuffer`: only the entries that change are written, which for large
    vocabularies costs less than allocating a fresh array; copy it to keep it past the next call);
    pass ``dense_masks=False`` for agents that compute masks from :attr:`tree` and
    ``info["state"]`` (tree nodes) themselves, which is far cheaper for large vocabularies.
    :meth:`action_masks` gives the boolean masks on demand (reused too in "reuse" mode). Finished
    slots get all-ones rows.

    Info keys (arrays over slots): ``state``, ``row``, ``target``, ``active``, ``hit``,
    ``invalid_action``, ``generated_len``, ``rank``; ``action_mask`` when dense.

    Args:
        num_envs: number of slots.
        task: a prebuilt :class:`~recgym.envs.task.RecGenTask` to share, or None to build one from
            ``task_kwargs`` (the same keywords as :class:`~recgym.envs.recgen.RecGenEnv`).
        autoreset_mode: ``"next_step"`` or ``"disabled"`` (or a Gymnasium ``AutoresetMode``).
        dense_masks: put vocabulary-wide masks in ``info``: True (fresh arrays), "reuse" (one
            array per dtype, rewritten in place) or False.
        strict: raise ValueError on an invalid token instead of ending the slot's episode.

    Example:
        >>> envs = RecGenVectorEnv(4, representation="sid", autoreset_mode="disabled",
        ...                        dense_masks=False,
        ...                        dataset_kwargs={"num_items": 300, "num_users": 100})
        >>> obs, info = envs.reset(seed=0, options={"group_size": 2})
        >>> info["row"][0] == info["row"][1]
        np.True_
        >>> rng = np.random.default_rng(0)
        >>> done = np.zeros(4, bool)
        >>> while not done.all():
        ...     actions = envs.tree.sample_tokens(np.where(done, 0, info["state"]), rng)
        ...     obs, rewards, terminated, truncated, info = envs.step(actions)
        ...     done |= terminated
    """

    render_mode = None

    def __init__(
        self,
        num_envs: int,
        task: RecGenTask | None = None,
        *,
        autoreset_mode: str | AutoresetMode = "next_step",
        dense_masks: bool | str = True,
        strict: bool = False,
        render_mode: str | None = None,
        **task_kwargs: Any,
    ) -> None:
        num_envs = check_int(num_envs, "num_envs", minimum=1)
        strict = check_bool(strict, "strict")
        if render_mode is not None:
            raise ValueError("the vector env does not render; render a single RecGenEnv instead")
        if isinstance(autoreset_mode, str):
            if autoreset_mode not in AUTORESET_MODES:
                raise ValueError(f"autoreset_mode must be one of {sorted(AUTORESET_MODES)}, "
                                 f"got {autoreset_mode!r}")
            autoreset_mode = AUTORESET_MODES[autoreset_mode]
        if autoreset_mode not in AUTORESET_MODES.values():
            raise ValueError(f"autoreset_mode {autoreset_mode} is not supported")
        self.task = resolve_task(task, task_kwargs)
        self.tree = self.task.tree
        self.num_envs = num_envs
        self.autoreset_mode = autoreset_mode
        if dense_masks not in (True, False, "reuse"):
            raise ValueError(f"dense_masks must be True, False or 'reuse', got {dense_masks!r}")
        self.dense_masks = dense_masks
        self._mask_buffers: dict[np.dtype, MaskBuffer] = {}  # "reuse" mode, one per dtype
        self.strict = strict
        self.metadata = {"autoreset_mode": autoreset_mode, "render_modes": []}
        self.single_action_space = spaces.Discrete(self.task.vocab_size)
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, self.task.vocab_size))
        self.single_observation_space = observation_space(self.task)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        b, task = num_envs, self.task
        self.states = np.zeros(b, dtype=np.int64)
        self.rows = np.zeros(b, dtype=np.int64)
        self.targets = np.zeros(b, dtype=np.int64)
        self.generated = np.full((b, task.max_response_len), task.pad_token_id, dtype=np.int64)
        self.generated_len = np.zeros(b, dtype=np.int64)
        self.history = np.full((b, task.max_history), -1, dtype=np.int64)
        self.history_len = np.zeros(b, dtype=np.int64)
        self.prompt_ids = np.full((b, task.max_prompt_len), task.pad_token_id, dtype=np.int64)
        self.prompt_len = np.zeros(b, dtype=np.int64)
        self.done = np.ones(b, dtype=bool)
        self._hit = np.zeros(b, dtype=bool)
        self._invalid = np.zeros(b, dtype=bool)
        self._custom: dict[int, Request] = {}  # slot -> request given through options
        # Ranked lists (recgym.rewards): the slot's rank and its list (the list's first slot).
        self.ranks = np.zeros(b, dtype=np.int64)
        self.lists = np.arange(b, dtype=np.int64)

    # -- reset ---------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        # Every option is checked before any slot changes: a bad reset leaves the episodes as they were.
        options = check_options(options, VECTOR_RESET_OPTIONS, type(self).__name__)
        reset_mask = options.get("reset_mask")
        slots = np.arange(self.num_envs) if reset_mask is None else np.flatnonzero(
            self._check_mask(reset_mask))
        if "requests" in options:
            if "rows" in options or "group_size" in options:
                raise ValueError("options: give 'requests' or 'rows' / 'group_size', not both")
            self._reset_custom(slots, options["requests"])
        else:
            group = options.get("group_size", 1)
            rows = self._pick_rows(len(slots), group, options.get("rows"))
            next_step = self.autoreset_mode == AutoresetMode.NEXT_STEP
            if self.task.reward in GROUP_REWARDS and group > 1 and next_step:
                raise ValueError(f"reward={self.task.reward!r} pays a group's misses once the whole group "
                                 "has ended, and with autoreset_mode='next_step' a finished slot restarts "
                                 "before that: use autoreset_mode='disabled'")
            self._fill(slots, rows)
            # slot j of a group of n is rank j % n of its request's list (group_size 1: lists of one)
            self.ranks[slots] = np.arange(len(slots)) % group
            self.lists[slots] = slots[np.arange(len(slots)) // group * group]
        return self._obs(), self._info(np.zeros(self.num_envs, bool))

    def _check_mask(self, mask: Any) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
            raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), "
                             f"got shape {mask.shape} dtype {mask.dtype}")
        return mask

    def _pick_rows(self, count: int, group_size: Any = 1, rows: Any = None) -> np.ndarray:
        """Split rows for ``count`` slots: ``rows`` (checked) or drawn, each repeated ``group_size`` times."""
        group = check_int(group_size, "options['group_size']", minimum=1)
        if count % group:
            raise ValueError(f"options['group_size']={group} must divide the number of slots being "
                             f"reset ({count})")
        n = self.task.num_requests
        if n == 0:
            raise ValueError(f"the {self.task.split!r} split of {self.task.dataset.name!r} has no requests")
        if rows is None:
            return np.repeat(self.np_random.integers(n, size=count // group), group)
        rows = int_array(rows, "options['rows']", minimum=0, maximum=n - 1)
        if rows.shape == (count // group,):
            return np.repeat(rows, group)
        if rows.shape != (count,):
            sizes = f"{count // group} or {count}" if group > 1 else f"{count}"
            raise ValueError(f"options['rows'] must have {sizes} entries, got {len(rows)}")
        return rows

    def _fill(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Start new episodes in ``slots`` for split rows ``rows`` (all arrays, no per-slot loop)."""
        ex, task = self.task.examples, self.task
        prompt_ids, prompt_len = task.prompt_tokens(rows)  # may raise: before any slot changes
        if self._custom:
            for s in slots.tolist():
                self._custom.pop(s, None)
        self.rows[slots] = rows
        self.targets[slots] = ex.target[rows]
        self.history[slots] = ex.history[rows]
        self.history_len[slots] = ex.history_len[rows]
        self.prompt_ids[slots], self.prompt_len[slots] = prompt_ids, prompt_len
        self._start(slots)

    def _reset_custom(self, slots: np.ndarray, requests: Any) -> None:
        if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, (Sequence, np.ndarray)):
            raise TypeError(f"options['requests'] must be a list of (history, target) pairs, "
                            f"got {type(requests).__name__}")
        if len(requests) != len(slots):
            raise ValueError(f"options['requests'] needs {len(slots)} (history, target) pairs, "
                             f"got {len(requests)}")
        checked = []
        for i, pair in enumerate(requests):
            name = f"options['requests'][{i}]"
            if isinstance(pair, (str, bytes)) or not isinstance(pair, (Sequence, np.ndarray)) \
                    or len(pair) != 2:
                raise TypeError(f"{name} must be a (history, target) pair, got {pair!r}")
            names = (f"{name} history", f"{name} target")
            checked.append(self.task.validate_request(pair[0], pair[1], names))
        prompt_ids, prompt_len = self.task.custom_prompt_tokens([r.history for r in checked])
        self.rows[slots] = -1
        self.targets[slots] = [r.target for r in checked]
        self.history[slots] = -1
        for s, r in zip(slots.tolist(), checked):
            self.history[s, : len(r.history)] = r.history
            self._custom[s] = r
        self.history_len[slots] = [len(r.history) for r in checked]
        self.prompt_ids[slots], self.prompt_len[slots] = prompt_ids, prompt_len
        self._start(slots)

    def _start(self, slots: np.ndarray) -> None:
        self.ranks[slots] = 0  # a list of one until a group reset says otherwise
        self.lists[slots] = slots
        self.states[slots] = self.tree.root
        self.generated[slots] = self.task.pad_token_id
        self.generated_len[slots] = 0
        self.done[slots] = False
        self._hit[slots] = False
        self._invalid[slots] = False

    # -- step ----------------------------------------------------------------------------------

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = self._check_actions(actions)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and self.done.any():
            finished = np.flatnonzero(self.done)
            self._fill(finished, self._pick_rows(len(finished)))
            active = np.ones(self.num_envs, bool)
            active[finished] = False
        else:
            active = ~self.done
        nxt = self.tree.step(np.where(active, self.states, self.tree.root), actions)
        invalid = active & (nxt < 0)
        if self.strict and invalid.any():
            i = int(np.flatnonzero(invalid)[0])
            raise ValueError(f"slot {i}: token {actions[i]} is not allowed (strict=True)")
        ok = active & ~invalid
        idx = np.flatnonzero(ok)
        self.generated[idx, self.generated_len[idx]] = actions[idx]
        self.generated_len[idx] += 1
        self.states[idx] = nxt[idx]
        complete = ok & self.tree.is_complete(self.states)
        ended = np.flatnonzero(complete)
        if ended.size:
            requests = [self._request(s) for s in ended.tolist()] if self.task.reward_fn else None
            rewards[ended], self._hit[ended] = self.task.rewards(
                self.states[ended], self.targets[ended], requests, self.ranks[ended])
        rewards[invalid] = self.task.miss_reward
        self._invalid |= invalid
        self.done |= complete | invalid
        if self.task.reward in GROUP_REWARDS and (complete | invalid).any():
            rewards += self._list_bonus(complete | invalid)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            terminated = complete | invalid
        else:
            terminated = self.done.copy()
        return self._obs(), rewards, terminated, np.zeros(self.num_envs, bool), self._info(active)

    def _list_bonus(self, ended: np.ndarray) -> np.ndarray:
        """The list part of every slot's reward (:func:`recgym.rewards.list_bonus`) for the lists whose
        last slot ended this step, on all their slots (earlier-finished ones too); 0 elsewhere."""
        b = self.num_envs
        members = np.bincount(self.lists, minlength=b)
        finished = np.bincount(self.lists, weights=self.done, minlength=b)
        closing = np.zeros(b, dtype=bool)
        closing[self.lists[ended]] = True
        closed = (closing & (finished == members))[self.lists]  # per slot: its list closed now
        list_hit = (np.bincount(self.lists, weights=self._hit, minlength=b) > 0)[self.lists]
        bonus = np.zeros(b)
        pay = closed & ~self._hit & list_hit  # ReRe: only the misses of lists that hold a hit
        if pay.any():
            bonus[pay] = rank_penalties(self.ranks[pay], members[self.lists[pay]])
        return bonus

    def _check_actions(self, actions: Any) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be integer token ids, got dtype {actions.dtype}")
        if ((actions < 0) | (actions >= self.task.vocab_size)).any():
            raise ValueError(f"actions must be in [0, {self.task.vocab_size})")
        return actions.astype(np.int64)

    def _request(self, slot: int) -> Request:
        return self._custom.get(slot) or self.task.request(int(self.rows[slot]))

    # -- outputs -------------------------------------------------------------------------------

    def action_masks(self) -> np.ndarray:
        """Boolean (num_envs, vocab_size) masks of the valid next tokens (all True for ended slots)."""
        return self._masks(bool)

    def _masks(self, dtype: Any) -> np.ndarray:
        if self.dense_masks == "reuse":
            key = np.dtype(dtype)
            if key not in self._mask_buffers:
                self._mask_buffers[key] = self.tree.mask_buffer(self.num_envs, dtype=key)
            return self._mask_buffers[key].update(self.states, full=self.done)
        masks = self.tree.mask(np.where(self.done, self.tree.root, self.states), dtype=dtype)
        masks[self.done] = 1
        return masks

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "prompt_ids": self.prompt_ids.copy(),
            "prompt_len": self.prompt_len.copy(),
            "generated_ids": self.generated.copy(),
            "generated_len": self.generated_len.copy(),
            "history": self.history.copy(),
            "history_len": self.history_len.copy(),
        }

    def _info(self, active: np.ndarray) -> dict[str, Any]:
        info: dict[str, Any] = {
            "state": self.states.copy(),
            "row": self.rows.copy(),
            "target": self.targets.copy(),
            "active": active,
            "hit": self._hit.copy(),
            "invalid_action": self._invalid.copy(),
            "generated_len": self.generated_len.copy(),
            "rank": self.ranks.copy(),
        }
        if self.dense_masks:
            info["action_mask"] = self._masks(np.int8)
        return info
