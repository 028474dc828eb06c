"""The token-level RecGen environment: generate the next item, one identifier token at a time."""

from __future__ import annotations

from typing import Any, SupportsInt

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from recgym._checks import check_bool
from recgym.envs.task import RecGenTask, Request, resolve_task


def check_render_mode(render_mode: str | None, modes: list[str]) -> None:
    """Raise a ValueError naming the supported modes unless ``render_mode`` is None or one of them.

    Example:
        >>> check_render_mode("ansi", ["ansi"])
    """
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be one of {modes}, got {render_mode!r}")


def observation_space(task: RecGenTask) -> spaces.Dict:
    """The observation space shared by the single and the vector env (one request's arrays)."""
    v, p, d, h = task.vocab_size, task.max_prompt_len, task.max_response_len, task.max_history
    n = task.dataset.catalogue.num_items
    return spaces.Dict({
        "prompt_ids": spaces.Box(0, v - 1, (p,), np.int64),
        "prompt_len": spaces.Box(0, p, (), np.int64),
        "generated_ids": spaces.Box(0, v - 1, (d,), np.int64),
        "generated_len": spaces.Box(0, d, (), np.int64),
        "history": spaces.Box(-1, n - 1, (h,), np.int64),
        "history_len": spaces.Box(0, h, (), np.int64),
    })


def as_action(action: Any, vocab_size: int) -> int:
    """Check one action: an integer token id in ``[0, vocab_size)``; anything else is a ValueError."""
    if isinstance(action, np.ndarray) and action.ndim == 0:
        action = action.item()
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
        raise ValueError(f"action must be an integer token id, got {action!r} ({type(action).__name__})")
    if not 0 <= int(action) < vocab_size:
        raise ValueError(f"action {action} is outside the action space Discrete({vocab_size})")
    return int(action)


class RecGenEnv(gym.Env):
    """Generate the next item a user interacts with, token by token, inside the catalogue's prefix tree.

    ## Description

    An episode is one recommendation request from a dataset split: a user's recent items and the
    item the user really chose next. The agent writes an item identifier (its title, or its
    semantic-ID codes) one token per step after the prompt's response header. Only tokens that keep
    the output on the prefix tree of all catalogue items are valid, so every finished output names
    a real item (or several items that share a title / SID).

    ## Action Space

    ``Discrete(vocab_size)``: the next token id. The valid ones are given by
    ``info["action_mask"]`` (a fresh ``np.int8`` array of length ``vocab_size``) and by
    :meth:`action_masks` (for sb3-contrib's MaskablePPO). LLM policies should rather build masks on
    their own device from :attr:`tree` (see :meth:`recgym.tree.PrefixTree.torch_tables`).

    ## Observation Space

    A ``Dict`` of int64 arrays:

    | key | shape | meaning |
    |---|---|---|
    | ``prompt_ids`` | (max_prompt_len,) | the prompt's token ids, padded with the pad token |
    | ``prompt_len`` | () | prompt length |
    | ``generated_ids`` | (max_response_len,) | tokens generated so far, padded |
    | ``generated_len`` | () | number of tokens generated |
    | ``history`` | (max_history,) | history item ids, oldest first, padded with -1 |
    | ``history_len`` | () | history length |

    The prompt text is in ``info["prompt"]`` after :meth:`reset`.

    ## Rewards

    0 on every step but the last. When the output is a complete item: ``hit_reward`` (default 1)
    if the target is among the items it denotes, else ``miss_reward`` (default 0); or the value of
    ``reward_fn(generated_item_ids, target, request)`` when given.

    ## Episode End

    Terminates when a complete item has been generated, or at the first invalid token (reward
    ``miss_reward``, ``info["invalid_action"] = True``; with ``strict=True`` a ValueError
    instead). Never truncates: the tree's depth bounds the episode length.

    ## Info

    ``action_mask``; ``target``; after :meth:`reset` also ``prompt`` and ``row`` (the request's
    row in the split, -1 for a request given in options); at the end ``generated_items`` (item ids
    of the output, empty after an invalid token), ``hit`` and ``invalid_action``.

    ## Arguments

    ``gym.make("RecGen-Synthetic-v0", split="train", representation="sid", ...)``: every keyword
    of :class:`~recgym.envs.task.RecGenTask` (dataset, split, representation, tokenizer, template,
    max_history, max_prompt_len, hit_reward, miss_reward, reward_fn, dataset_kwargs), plus
    ``task`` (a prebuilt task to share), ``strict`` and ``render_mode`` (``"ansi"``).

    ``reset(options={"row": i})`` plays row i of the split; ``reset(options={"history": [...],
    "target": t})`` plays a request of your own. Otherwise rows are drawn uniformly with
    ``self.np_random``. Other keys, and values that are not ints (``row=1.9``, ``history="123"``),
    are errors naming the option: nothing is silently ignored or truncated.

    ## Version History

    * v0: initial version.

    Example:
        >>> import gymnasium as gym, recgym
        >>> env = gym.make("RecGen-Synthetic-v0", representation="sid",
        ...                dataset_kwargs={"num_items": 300, "num_users": 100})
        >>> obs, info = env.reset(seed=0)
        >>> done = False
        >>> while not done:
        ...     action = int(np.flatnonzero(info["action_mask"])[0])
        ...     obs, reward, done, _, info = env.step(action)
        >>> len(info["generated_items"]) >= 1
        True
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        task: RecGenTask | None = None,
        *,
        strict: bool = False,
        render_mode: str | None = None,
        **task_kwargs: Any,
    ) -> None:
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.strict = check_bool(strict, "strict")  # before the (costly) task is built
        self.task = resolve_task(task, task_kwargs)
        self.tree = self.task.tree
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(self.task.vocab_size)
        self.observation_space = observation_space(self.task)
        self._request: Request | None = None
        self._prompt = np.zeros(0, np.int64)
        self._generated: list[int] = []
        self._state = self.tree.root
        self._done = True
        self._last_items = np.zeros(0, np.int64)

    # -- gymnasium API -------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        task = self.task
        self._request, self._prompt, self._prompt_len = task.request_from_options(
            options, self.np_random, type(self).__name__)
        self._generated = []
        self._state = self.tree.root
        self._done = False
        self._last_items = np.zeros(0, np.int64)
        info = self._info()
        info["prompt"] = task.items.prompt_text(self._request.history)
        info["row"] = self._request.row
        return self._obs(), info

    def step(self, action: SupportsInt) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode has ended: call reset() before step()")
        token = as_action(action, self.task.vocab_size)
        nxt = int(self.tree.step(np.array([self._state]), np.array([token]))[0])
        if nxt < 0:
            if self.strict:
                raise ValueError(f"token {token} is not allowed after {self._generated} (strict=True)")
            self._done = True
            info = self._info(invalid=True)
            return self._obs(), self.task.miss_reward, True, False, info
        self._generated.append(token)
        self._state = nxt
        reward = 0.0
        if self.tree.is_complete(np.array([nxt]))[0]:
            self._done = True
            self._last_items = self.tree.items(nxt)
            rewards, _ = self.task.rewards(np.array([nxt]), np.array([self._request.target]), [self._request])
            reward = float(rewards[0])
        return self._obs(), reward, self._done, False, self._info()

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        req, items = self._request, self.task.items
        if req is None:
            return "RecGenEnv: call reset() first"
        lines = [
            "history: " + " | ".join(items.item_text(i) for i in req.history),
            f"output:  {items.decode(self._generated)!r}" + ("  (complete)" if self._done else ""),
            f"target:  {items.item_text(req.target)} (item {req.target})",
        ]
        if self._done and len(self._last_items):
            lines.append(f"hit: {bool(req.target in self._last_items)}")
        return "\n".join(lines)

    def action_masks(self) -> np.ndarray:
        """Valid next tokens as a boolean vector (the method sb3-contrib's MaskablePPO calls)."""
        if self._done:
            return np.ones(self.task.vocab_size, dtype=bool)  # any action; step() will refuse
        return self.tree.mask(np.array([self._state]), dtype=bool)[0]

    # -- helpers -------------------------------------------------------------------------------

    def _obs(self) -> dict[str, np.ndarray]:
        task, req = self.task, self._request
        generated = np.full(task.max_response_len, task.pad_token_id, dtype=np.int64)
        generated[: len(self._generated)] = self._generated
        history = np.full(task.max_history, -1, dtype=np.int64)
        history[: len(req.history)] = req.history
        return {
            "prompt_ids": self._prompt.copy(),
            "prompt_len": np.array(self._prompt_len, dtype=np.int64),
            "generated_ids": generated,
            "generated_len": np.array(len(self._generated), dtype=np.int64),
            "history": history,
            "history_len": np.array(len(req.history), dtype=np.int64),
        }

    def _info(self, invalid: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {
            "action_mask": self.action_masks().astype(np.int8),
            "target": self._request.target,
        }
        if self._done:
            info["generated_items"] = self._last_items.copy()
            info["hit"] = bool(self._request.target in self._last_items)
            info["invalid_action"] = invalid
        return info
