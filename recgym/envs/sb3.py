"""stable-baselines3 wrappers: compact actions and observations that SB3's MLP policies can learn from.

:class:`~recgym.envs.recgen.RecGenEnv` speaks token ids of a whole LLM vocabulary and observes
prompts as token ids, which suits LLM policies. An SB3 policy wants small spaces:

* :class:`CompactActions`: ``Discrete(C)`` over the ``C`` tokens that occur in the prefix tree
  (``tree.tokens_in_tree``), with :meth:`~CompactActions.action_masks` for sb3-contrib's
  MaskablePPO.
* :class:`CompactObservation`: a ``MultiDiscrete`` observation of the last history items and the
  tokens generated so far; SB3 one-hot encodes ``MultiDiscrete``, so an ``MlpPolicy`` sees one-hot
  item ids and prefix tokens (integers fed as floats would learn poorly).

:func:`make_sb3_env` stacks both on a :class:`~recgym.envs.recgen.RecGenEnv`. Nothing here imports
stable-baselines3: the wrappers are plain Gymnasium.
"""

from __future__ import annotations

from typing import Any, SupportsInt

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from recgym._checks import check_bool, check_int, int_array
from recgym.envs.recgen import RecGenEnv, as_action
from recgym.envs.task import RecGenTask
from recgym.tree import PrefixTree


def compact_token_maps(tree: PrefixTree) -> tuple[np.ndarray, np.ndarray]:
    """``(compact_to_token [C], token_to_compact [vocab_size])`` over the tokens used in ``tree``.

    ``token_to_compact`` is -1 for tokens that occur nowhere in the tree.

    >>> tree = PrefixTree([[5, 1, 0], [7, 0]], vocab_size=8)
    >>> compact_to_token, token_to_compact = compact_token_maps(tree)
    >>> compact_to_token.tolist(), token_to_compact.tolist()
    ([0, 1, 5, 7], [0, 1, -1, -1, -1, 2, -1, 3])
    """
    compact_to_token = np.asarray(tree.tokens_in_tree, dtype=np.int64)
    token_to_compact = np.full(tree.vocab_size, -1, dtype=np.int64)
    token_to_compact[compact_to_token] = np.arange(len(compact_to_token))
    return compact_to_token, token_to_compact


def _recgen(env: gym.Env) -> RecGenEnv:
    base = env.unwrapped
    if not isinstance(base, RecGenEnv):
        raise TypeError(f"expected a RecGenEnv underneath the wrappers, got {type(base).__name__}")
    return base


class CompactActions(gym.Wrapper):
    """Actions are indices into the tokens that occur in the prefix tree, not the whole vocabulary.

    The action space becomes ``Discrete(C)`` with ``C = len(tree.tokens_in_tree)`` (39 for a
    300-item synthetic SID catalogue, against a vocabulary of hundreds or 151,936 for Qwen).
    :meth:`action_masks` gives the valid compact actions as booleans (what MaskablePPO calls), and
    ``info["action_mask"]`` is the same mask as ``np.int8``. An invalid compact action is passed on
    as its token and ends the episode like any invalid token.

    Attributes:
        compact_to_token: token id of each compact action, ``(C,)``.
        token_to_compact: compact action of each token id, -1 outside the tree, ``(vocab_size,)``.

    Example:
        >>> env = CompactActions(RecGenEnv(representation="sid",
        ...                                dataset_kwargs={"num_items": 300, "num_users": 100}))
        >>> obs, info = env.reset(seed=0)
        >>> action = int(np.flatnonzero(env.action_masks())[0])
        >>> obs, *_ = env.step(action)
        >>> int(obs["generated_ids"][0]) == int(env.compact_to_token[action])
        True
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.tree = _recgen(env).tree
        self.compact_to_token, self.token_to_compact = compact_token_maps(self.tree)
        self.action_space = spaces.Discrete(len(self.compact_to_token))
        self._mask = np.ones(len(self.compact_to_token), dtype=bool)

    def to_tokens(self, actions: Any) -> np.ndarray:
        """Token ids of compact actions (vectorized; ints in ``[0, C)``, any shape)."""
        a = np.asarray(actions)
        return self.compact_to_token[int_array(actions, "actions", ndim=a.ndim, minimum=0,
                                               maximum=len(self.compact_to_token) - 1)]

    def to_compact(self, tokens: Any) -> np.ndarray:
        """Compact actions of token ids (vectorized; -1 for tokens outside the tree, any shape)."""
        t = np.asarray(tokens)
        return self.token_to_compact[int_array(tokens, "tokens", ndim=t.ndim, minimum=0,
                                               maximum=len(self.token_to_compact) - 1)]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, self._compact_info(info)

    def step(self, action: SupportsInt) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        token = int(self.compact_to_token[as_action(action, len(self.compact_to_token))])
        obs, reward, terminated, truncated, info = self.env.step(token)
        return obs, reward, terminated, truncated, self._compact_info(info)

    def action_masks(self) -> np.ndarray:
        """Valid compact actions as a boolean vector of length ``C`` (all True once the episode ended)."""
        return self._mask.copy()

    def _compact_info(self, info: dict[str, Any]) -> dict[str, Any]:
        # The env's dense token mask is a gather away from the compact one: no tree walk here.
        dense = info["action_mask"] if "action_mask" in info else self.env.unwrapped.action_masks()
        self._mask = np.asarray(dense)[self.compact_to_token].astype(bool)
        return {**info, "action_mask": self._mask.astype(np.int8)}


class CompactObservation(gym.ObservationWrapper):
    """A ``MultiDiscrete`` observation: the last history items and the generated prefix, as small ids.

    For each of the ``k`` most recent history items (most recent first): its item id + 1 (``N + 1``
    values, 0 where the history is shorter) and, with ``item_tokens=True``, the compact ids + 1
    (see :func:`compact_token_maps`) of its ``D = max_response_len`` tokens (``C + 1`` values
    each, 0 as padding). Then the compact ids + 1 of the ``D`` tokens generated so far (0 where
    nothing was generated yet). SB3 one-hot encodes every entry, so an ``MlpPolicy`` sees which
    item the user just interacted with, what its identifier tokens are, and what the output already
    holds. The item tokens matter: in the synthetic data the next item mostly shares the last
    item's category (SID level a), and "write the last item's first code" is one linear map from
    one-hot tokens, where from one-hot item ids alone it must be learned item by item (measured on
    the 300-item synthetic SID env, MaskablePPO after 64k steps: 6.5% hits with item tokens, 1.8%
    without, 0.3-0.4% for a uniformly random valid policy).

    Args:
        env: a :class:`~recgym.envs.recgen.RecGenEnv`, possibly wrapped.
        history_items: ``k``, how many of the most recent history items to observe.
        item_tokens: also observe the history items' tokens (``D * (C + 1)`` one-hot inputs per
            item: keep it for SID catalogues, consider turning it off for long titles).
        item_ids: observe the history items' ids (``N + 1`` one-hot inputs per item). With SIDs
            the tokens already name the item, and on a large catalogue the ids dominate the input
            (Games: 16,860 of 26,640 inputs): ``item_ids=False`` keeps only the tokens.

    Example:
        >>> env = CompactObservation(RecGenEnv(representation="sid",
        ...                                    dataset_kwargs={"num_items": 300, "num_users": 100}),
        ...                          item_tokens=False)
        >>> obs, info = env.reset(options={"history": [4, 7], "target": 9})
        >>> obs.tolist()
        [8, 0, 0, 0, 0]
    """

    def __init__(
        self, env: gym.Env, history_items: int = 1, item_tokens: bool = True, item_ids: bool = True
    ) -> None:
        super().__init__(env)
        base = _recgen(env)
        history_items = check_int(history_items, "history_items", minimum=1, maximum=base.task.max_history)
        item_tokens = check_bool(item_tokens, "item_tokens")
        item_ids = check_bool(item_ids, "item_ids")
        if not (item_tokens or item_ids):
            raise ValueError("observe the history items by their ids, their tokens or both")
        self.history_items = history_items
        self.item_tokens = item_tokens
        self.item_ids = item_ids
        tree = base.tree
        self.num_items = base.task.dataset.catalogue.num_items
        _, self.token_to_compact = compact_token_maps(tree)
        num_compact = int((self.token_to_compact >= 0).sum())
        depth = base.task.max_response_len
        # Row i + 1: compact ids + 1 of item i's tokens (row 0, "no item", stays all 0).
        self.item_table = np.zeros((self.num_items + 1, depth), dtype=np.int64)
        node = tree.item_nodes.copy()
        while (tree.depth[node] > 0).any():  # walk every item up to the root at once, depth by depth
            deep = tree.depth[node] > 0
            d, n = tree.depth[node[deep]], node[deep]
            self.item_table[tree.item_ids[deep] + 1, d - 1] = self.token_to_compact[tree.token_in[n]] + 1
            node[deep] = tree.parent[n]
        per_item = [self.num_items + 1] if item_ids else []
        per_item += [num_compact + 1] * depth if item_tokens else []
        nvec = per_item * history_items + [num_compact + 1] * depth
        self.observation_space = spaces.MultiDiscrete(np.array(nvec, dtype=np.int64))

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.encode(observation["history"][None], np.atleast_1d(observation["history_len"]),
                           observation["generated_ids"][None], np.atleast_1d(observation["generated_len"]))[0]

    def encode(
        self, history: Any, history_len: Any, generated: Any, generated_len: Any
    ) -> np.ndarray:
        """Observations of a batch of (request, prefix) states at once: ``(B, len(nvec))`` int64.

        What :meth:`observation` returns for one env, vectorized over rows, so that an agent can
        score many requests and beams in one forward (e.g. a beam search over the prefix tree).

        Args:
            history: ``(B, H)`` history item ids, oldest first, padded after ``history_len``.
            history_len: ``(B,)`` history lengths.
            generated: ``(B, T)`` generated token ids (``T <= max_response_len``), anything (e.g.
                -1) after ``generated_len``.
            generated_len: ``(B,)`` number of tokens generated.

        Example:
            >>> env = CompactObservation(RecGenEnv(representation="sid",
            ...                                    dataset_kwargs={"num_items": 300, "num_users": 100}),
            ...                          item_tokens=False)
            >>> env.encode([[4, 7, -1], [2, -1, -1]], [2, 1], np.full((2, 4), -1), [0, 0]).tolist()
            [[8, 0, 0, 0, 0], [3, 0, 0, 0, 0]]
        """
        history = int_array(history, "history", ndim=2)
        length = int_array(history_len, "history_len")
        generated = int_array(generated, "generated", ndim=2)
        count = int_array(generated_len, "generated_len")
        # The k most recent items, most recent first; 0 = no item.
        position = length[:, None] - 1 - np.arange(self.history_items)
        picked = np.take_along_axis(history, np.maximum(position, 0), axis=1)
        recent = np.where(position >= 0, picked + 1, 0)
        parts = [recent[:, :, None]] if self.item_ids else []
        parts += [self.item_table[recent]] if self.item_tokens else []  # (B, k, D)
        per_item = np.concatenate(parts, axis=2).reshape(len(recent), -1)
        depth = self.item_table.shape[1]
        if generated.shape[1] < depth:
            generated = np.pad(generated, ((0, 0), (0, depth - generated.shape[1])), constant_values=-1)
        written = np.arange(depth) < count[:, None]
        prefix = np.where(written, self.token_to_compact[np.maximum(generated[:, :depth], 0)] + 1, 0)
        return np.concatenate([per_item, prefix], axis=1)


def make_sb3_env(
    task: RecGenTask | None = None, *, history_items: int = 1, item_tokens: bool = True,
    item_ids: bool = True, **env_kwargs: Any,
) -> CompactObservation:
    """A :class:`~recgym.envs.recgen.RecGenEnv` with compact actions and observations, for SB3.

    Args:
        task: a prebuilt task to share (e.g. between a training and an evaluation env).
        history_items, item_tokens, item_ids: what to observe of the history (see
            :class:`CompactObservation`).
        env_kwargs: keywords of :class:`~recgym.envs.recgen.RecGenEnv` (``strict``,
            ``render_mode``) and, without ``task``, of :class:`~recgym.envs.task.RecGenTask`.

    Example:
        >>> env = make_sb3_env(representation="sid",
        ...                    dataset_kwargs={"num_items": 300, "num_users": 100})
        >>> obs, info = env.reset(seed=0)
        >>> env.observation_space.contains(obs), env.action_space
        (True, Discrete(39))

        With sb3-contrib: ``MaskablePPO("MlpPolicy", env).learn(...)``; MaskablePPO finds
        :meth:`CompactActions.action_masks` through the wrapper.
    """
    env = CompactActions(RecGenEnv(task, **env_kwargs))
    return CompactObservation(env, history_items=history_items, item_tokens=item_tokens, item_ids=item_ids)
