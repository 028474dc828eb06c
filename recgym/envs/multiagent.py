"""Several recommender agents generating items for the same request (a PettingZoo ParallelEnv)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv

from recgym._checks import check_choice, check_int, check_real
from recgym.envs.recgen import as_action, check_render_mode, observation_space
from recgym.envs.task import RecGenTask, Request, resolve_task

MODES = ("competitive", "cooperative")

AgentObs = dict[str, np.ndarray]


class RecGenParallelEnv(ParallelEnv[str, AgentObs, int]):
    """``num_agents`` recommenders each write one item, token by token, for the same request.

    ## Description

    An episode is one recommendation request (as in :class:`~recgym.envs.recgen.RecGenEnv`).
    Agents ``"recommender_0" .. "recommender_{k-1}"`` each generate an item identifier inside the
    catalogue's prefix tree, all at once: every :meth:`step` takes one token from every agent that
    is still generating.

    ## Action Space

    ``Discrete(vocab_size)`` per agent: its next token id. ``obs[agent]["action_mask"]`` marks
    the valid ones.

    ## Observation Space

    Per agent, a ``Dict`` with the keys of :class:`~recgym.envs.recgen.RecGenEnv`'s observation
    (the shared prompt and history, the agent's own generated tokens) plus ``action_mask``
    (``np.int8``, ``(vocab_size,)``), where PettingZoo's tools look for it.

    ## Modes and Rewards

    ``mode="competitive"``: agents are independent. An agent that completes an item gets
    ``hit_reward`` if it is the target, else ``miss_reward`` (or ``reward_fn``'s value), and
    leaves :attr:`agents` (terminated), as usual in PettingZoo.

    ``mode="cooperative"``: the agents write a *slate* together and share one reward, known only
    when the last agent finishes. Since PettingZoo gives a terminated agent no further reward, an
    agent that completes its item does **not** terminate: it *waits* in :attr:`agents` (reward 0,
    ``info["waiting"] = True``) with a mask that allows only the pad token (the token a finished
    sequence emits in Hugging Face ``generate``); a waiting agent's action is ignored and may be
    left out of the action dict. At the step where the last agent finishes, every agent receives

        team reward = (hit_reward if any agent's item hit else miss_reward)
                      - duplicate_penalty * (number of agents whose item duplicates an earlier agent's)

    and all terminate together. With a ``reward_fn`` the first term is the best agent's value.
    ``duplicate_penalty`` defaults to 0.5 (our choice: a duplicate wastes a slate slot, so it costs
    half a hit; a slate of k identical hits is then still worth more than a miss for k <= 2).
    Episodes in this mode last exactly as long as the longest output.

    ## Episode End

    An agent is finished when its output is a complete item, or at its first invalid token (an
    empty output: ``miss_reward`` in competitive mode, a miss in the team reward in cooperative
    mode; ``info["invalid_action"] = True``). Invalid outputs never count as duplicates. Never
    truncates: the tree's depth bounds the episode length.

    ## Info

    Per agent: ``target``; after :meth:`reset` also ``prompt`` and ``row``; once the agent is
    finished ``generated_items``, ``hit`` and ``invalid_action`` (and ``waiting`` in cooperative
    mode); at the end of a cooperative episode ``slate_hit`` and ``duplicate`` (this agent's item
    duplicates an earlier agent's).

    ## Arguments

    ``task`` (a prebuilt :class:`~recgym.envs.task.RecGenTask`) or the task keywords,
    ``num_agents`` (an int >= 1), ``mode``, ``duplicate_penalty`` (finite, >= 0),
    ``render_mode`` (``"ansi"``).
    ``reset(seed=...)`` seeds the request draws (and the agents' action spaces);
    ``reset(options={"row": i})`` or ``reset(options={"history": [...], "target": t})`` pick the
    request as in :class:`~recgym.envs.recgen.RecGenEnv`, with the same checks, except that an
    unknown key is a ``UserWarning`` (and ignored) rather than an error: PettingZoo's
    ``parallel_api_test`` resets with ``options={"options": 1}``.

    ## Version History

    * v0: initial version.

    Example:
        >>> env = RecGenParallelEnv(num_agents=2, mode="cooperative", representation="sid",
        ...                         dataset_kwargs={"num_items": 300, "num_users": 100})
        >>> obs, infos = env.reset(seed=0)
        >>> while env.agents:
        ...     actions = {a: int(np.flatnonzero(obs[a]["action_mask"])[0]) for a in env.agents}
        ...     obs, rewards, terminations, truncations, infos = env.step(actions)
        >>> rewards["recommender_0"] == rewards["recommender_1"], infos["recommender_1"]["duplicate"]
        (True, True)
    """

    metadata = {"render_modes": ["ansi"], "name": "recgen_parallel_v0", "is_parallelizable": True}

    def __init__(
        self,
        task: RecGenTask | None = None,
        *,
        num_agents: int = 2,
        mode: str = "competitive",
        duplicate_penalty: float = 0.5,
        render_mode: str | None = None,
        **task_kwargs: Any,
    ) -> None:
        num_agents = check_int(num_agents, "num_agents", minimum=1)
        check_choice(mode, "mode", MODES)
        # A negative penalty would reward duplicates: 0 turns the penalty off.
        duplicate_penalty = check_real(duplicate_penalty, "duplicate_penalty", minimum=0.0)
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.task = resolve_task(task, task_kwargs)
        if self.task.reward != "hit":  # the agents' items are a slate, not a ranked list
            raise ValueError(f"reward={self.task.reward!r}: the multi-agent env pays the hit reward "
                             "(a slate has no ranks); use reward='hit'")
        self.tree = self.task.tree
        self.mode = mode
        self.duplicate_penalty = duplicate_penalty
        self.render_mode = render_mode
        self.wait_token = self.task.pad_token_id
        self.possible_agents = [f"recommender_{i}" for i in range(num_agents)]
        self.agents: list[str] = []
        self._index = {agent: i for i, agent in enumerate(self.possible_agents)}
        v = self.task.vocab_size
        self.observation_spaces = {
            agent: spaces.Dict({
                **observation_space(self.task).spaces,
                "action_mask": spaces.Box(0, 1, (v,), np.int8),
            })
            for agent in self.possible_agents
        }
        self.action_spaces = {agent: spaces.Discrete(v) for agent in self.possible_agents}
        self.np_random, _ = seeding.np_random()
        k, d = num_agents, self.task.max_response_len
        self._request: Request | None = None
        self._prompt = np.zeros(0, np.int64)
        self._prompt_len = 0
        self._states = np.zeros(k, dtype=np.int64)
        self._generated = np.full((k, d), self.task.pad_token_id, dtype=np.int64)
        self._generated_len = np.zeros(k, dtype=np.int64)
        self._finished = np.zeros(k, dtype=bool)
        self._invalid = np.zeros(k, dtype=bool)
        self._hit = np.zeros(k, dtype=bool)
        self._reward = np.zeros(k, dtype=np.float64)  # each agent's own reward, once finished

    def observation_space(self, agent: str) -> spaces.Dict:
        """The observation space of ``agent`` (the same object on every call)."""
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        """The action space of ``agent`` (the same object on every call)."""
        return self.action_spaces[agent]

    # -- PettingZoo API ------------------------------------------------------------------------

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, AgentObs], dict[str, dict[str, Any]]]:
        if seed is not None:
            self.np_random, _ = seeding.np_random(seed)
            for i, agent in enumerate(self.possible_agents):
                self.action_spaces[agent].seed(seed + i)
        task = self.task
        # Unknown keys warn here rather than raise: PettingZoo's own parallel_api_test resets with
        # options={"options": 1} to probe the signature. Bad values of known keys still raise.
        self._request, self._prompt, self._prompt_len = task.request_from_options(
            options, self.np_random, type(self).__name__, unknown="warn")
        self._states[:] = self.tree.root
        self._generated[:] = task.pad_token_id
        self._generated_len[:] = 0
        self._finished[:] = False
        self._invalid[:] = False
        self._hit[:] = False
        self._reward[:] = 0.0
        self.agents = self.possible_agents[:]
        prompt = task.items.prompt_text(self._request.history)
        row = self._request.row
        infos = {agent: {**self._info(agent), "prompt": prompt, "row": row} for agent in self.agents}
        return self._observations(self.agents), infos

    def step(self, actions: dict[str, Any]) -> tuple[
        dict[str, AgentObs], dict[str, float], dict[str, bool], dict[str, bool], dict[str, dict[str, Any]]
    ]:
        if not self.agents:
            raise RuntimeError("the episode has ended: call reset() before step()")
        live = self.agents
        unknown = set(actions) - set(live)
        if unknown:
            raise ValueError(f"actions for agents that are not live: {sorted(unknown)} (live: {live})")
        acting = [self._index[a] for a in live if not self._finished[self._index[a]]]
        missing = [self.possible_agents[i] for i in acting if self.possible_agents[i] not in actions]
        if missing:
            raise ValueError(f"no action for {missing}: every agent still generating needs one")
        idx = np.array(acting, dtype=np.int64)
        tokens = np.array([as_action(actions[self.possible_agents[i]], self.task.vocab_size) for i in acting],
                          dtype=np.int64)
        nxt = self.tree.step(self._states[idx], tokens)
        invalid = idx[nxt < 0]
        ok = nxt >= 0
        moved = idx[ok]
        self._generated[moved, self._generated_len[moved]] = tokens[ok]
        self._generated_len[moved] += 1
        self._states[moved] = nxt[ok]
        completed = moved[self.tree.is_complete(self._states[moved])]
        if completed.size:
            req = self._request
            self._reward[completed], self._hit[completed] = self.task.rewards(
                self._states[completed], np.full(completed.size, req.target), [req] * completed.size)
        self._reward[invalid] = self.task.miss_reward
        self._invalid[invalid] = True
        self._finished[completed] = True
        self._finished[invalid] = True

        rewards = dict.fromkeys(live, 0.0)
        infos = {agent: self._info(agent) for agent in live}
        if self.mode == "competitive":
            ended = {self.possible_agents[i] for i in np.concatenate([completed, invalid]).tolist()}
            for agent in ended:
                rewards[agent] = float(self._reward[self._index[agent]])
        elif self._finished.all():
            ended = set(live)
            team, slate_hit, duplicate = self._team_reward()
            for agent in live:
                i = self._index[agent]
                rewards[agent] = team
                infos[agent].update(slate_hit=slate_hit, duplicate=bool(duplicate[i]), waiting=False)
        else:
            ended = set()
        terminations = {agent: agent in ended for agent in live}
        truncations = dict.fromkeys(live, False)
        observations = self._observations(live)
        self.agents = [agent for agent in live if agent not in ended]
        return observations, rewards, terminations, truncations, infos

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        req, items = self._request, self.task.items
        if req is None:
            return "RecGenParallelEnv: call reset() first"
        lines = ["history: " + " | ".join(items.item_text(i) for i in req.history)]
        for i, agent in enumerate(self.possible_agents):
            text = items.decode(self._generated[i, : self._generated_len[i]].tolist())
            status = "generating"
            if self._finished[i]:
                status = "invalid" if self._invalid[i] else ("hit" if self._hit[i] else "miss")
            lines.append(f"{agent}: {text!r} ({status})")
        lines.append(f"target:  {items.item_text(req.target)} (item {req.target})")
        return "\n".join(lines)

    def state(self) -> np.ndarray:
        """A global view for centralized critics: all agents' generated tokens, ``(k, max_response_len)``."""
        return self._generated.copy()

    # -- helpers -------------------------------------------------------------------------------

    def _team_reward(self) -> tuple[float, bool, np.ndarray]:
        """Cooperative reward: the slate's best item minus a penalty per duplicated item."""
        valid = np.flatnonzero(~self._invalid)
        slate_hit = bool(self._hit.any())
        if self.task.reward_fn is None or valid.size == 0:
            base = self.task.hit_reward if slate_hit else self.task.miss_reward
        else:
            base = float(self._reward[valid].max())
        # Same terminal node <=> same item set; the first agent to write an item keeps it.
        duplicate = np.zeros(len(self.possible_agents), dtype=bool)
        _, first = np.unique(self._states[valid], return_index=True)
        duplicate[valid] = True
        duplicate[valid[first]] = False
        return base - self.duplicate_penalty * int(duplicate.sum()), slate_hit, duplicate

    def _observations(self, agents: list[str]) -> dict[str, AgentObs]:
        task, req = self.task, self._request
        idx = np.array([self._index[a] for a in agents], dtype=np.int64)
        waiting = self._finished[idx]
        # Finished agents may only wait (pad token); in competitive mode they are leaving anyway.
        masks = self.tree.mask(np.where(waiting, self.tree.root, self._states[idx]))
        masks[waiting] = 0
        masks[waiting, self.wait_token] = 1
        history = np.full(task.max_history, -1, dtype=np.int64)
        history[: len(req.history)] = req.history
        return {
            agent: {
                "prompt_ids": self._prompt.copy(),
                "prompt_len": np.array(self._prompt_len, dtype=np.int64),
                "generated_ids": self._generated[i].copy(),
                "generated_len": np.array(self._generated_len[i], dtype=np.int64),
                "history": history.copy(),
                "history_len": np.array(len(req.history), dtype=np.int64),
                "action_mask": masks[row],
            }
            for row, (agent, i) in enumerate(zip(agents, idx.tolist()))
        }

    def _info(self, agent: str) -> dict[str, Any]:
        i = self._index[agent]
        info: dict[str, Any] = {"target": self._request.target}
        if self._finished[i]:
            invalid = bool(self._invalid[i])
            items = np.zeros(0, np.int64) if invalid else self.tree.items(int(self._states[i])).copy()
            info.update(generated_items=items, hit=bool(self._hit[i]), invalid_action=invalid)
            if self.mode == "cooperative":
                info["waiting"] = True
        return info
