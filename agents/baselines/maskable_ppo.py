"""MaskablePPO (sb3-contrib) on the compact SB3 env, scored as a recommender by beam search.

Training: ``MaskablePPO("MlpPolicy")`` on :func:`recgym.envs.sb3.make_sb3_env` (compact actions,
compact one-hot observations) over the train split's requests, for a budget of *episodes* (one
episode = one sampled item = one rollout of the LLM learners), with Monte-Carlo returns
(gamma = lambda = 1: an episode is a few tokens with one terminal reward). A callback logs, per
PPO update, the rollout hit rate and the policy's entropy against episodes to ``metrics.jsonl``
(the same keys as :func:`agents.training.rl.train_rl`), validates by beam search every
``eval_every_episodes`` and keeps the best-on-valid weights.

Evaluation: HR/NDCG@K need K distinct items per request, so :meth:`MaskablePPOAgent.beam_search`
runs a constrained beam search over the prefix tree whose token scores are the PPO policy's action
log-probs, normalised over the tokens the tree allows (what the masked policy samples from). Each
depth is one batched forward over every (request, beam) pair.

sb3-contrib is imported inside the functions that need it.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.model.beam import excluded_keys, mask_excluded
from agents.training.tracking import MetricLogger
from recgym.envs.sb3 import CompactObservation, make_sb3_env
from recgym.envs.task import RecGenTask


@dataclass
class MaskablePPOConfig:
    """Settings of :func:`train_maskable_ppo` (defaults: those that beat a random policy in the tests).

    Args:
        num_envs: parallel envs (``DummyVecEnv``).
        episodes_per_update: episodes each env plays per PPO update (``n_steps`` = this x the
            longest item's token count).
        batch_size: PPO's minibatch size.
        epochs: PPO's passes over each update's rollouts.
        lr: PPO's Adam learning rate.
        ent_coef: PPO's entropy bonus.
        hidden: width of the one hidden layer of the policy and value MLPs.
        history_items: history items the compact observation holds (see
            :class:`~recgym.envs.sb3.CompactObservation`).
        item_tokens: whether the observation holds the history's item tokens (off for titles).
        item_ids: whether the observation holds the history's item ids (off for large SID
            catalogues).
        seed: environments, initialisation and sampling.
        device: torch device of the policy.
        progress: a progress bar over episodes.

    Example:
        >>> MaskablePPOConfig(num_envs=4).hidden
        128
    """

    num_envs: int = 8
    episodes_per_update: int = 64
    batch_size: int = 256
    epochs: int = 4
    lr: float = 3e-3
    ent_coef: float = 0.03
    hidden: int = 128
    history_items: int = 1
    item_tokens: bool = True
    item_ids: bool = True
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def import_maskable_ppo() -> Any:
    """sb3-contrib's ``MaskablePPO`` class, or an ImportError that says what to install.

    Example:
        >>> import_maskable_ppo().__name__
        'MaskablePPO'
    """
    try:
        from sb3_contrib import MaskablePPO
    except ImportError as err:
        raise ImportError("the maskable_ppo agent needs sb3-contrib (a dependency of recgym-llm): "
                          "pip install 'sb3-contrib>=2.3' (or reinstall with pip install -e .)") from err
    return MaskablePPO


class MaskablePPOAgent:
    """A MaskablePPO policy over compact tokens as a recommender: top-k items by beam search.

    Args:
        model: a trained ``sb3_contrib.MaskablePPO`` on ``encoder``'s observations.
        encoder: the :class:`~recgym.envs.sb3.CompactObservation` it was trained with (its
            tables encode any batch of (request, prefix) states).

    Example:
        >>> # agent, summary = train_maskable_ppo(train, valid, episodes=640)
        >>> # terminals, scores = agent.beam_search_rows(test, np.arange(8), width=20, k=20)
    """

    def __init__(self, model: Any, encoder: CompactObservation) -> None:
        self.model = model
        self.encoder = encoder
        self.tree = encoder.get_wrapper_attr("tree")
        self.tables = self.tree.torch_tables("cpu")
        self.token_to_compact = torch.as_tensor(encoder.token_to_compact)

    @torch.no_grad()
    def token_logprobs(
        self, history: np.ndarray, history_len: np.ndarray, prefix: np.ndarray, depth: np.ndarray,
        states: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the allowed next tokens of a batch of states, normalised over those tokens.

        Rows are (request, prefix) pairs: the request's history, the prefix's tokens ``prefix``
        (``(N, T)``, ``depth`` of them real) and its tree node ``states``. Returns padded
        ``(tokens [N, K], logp [N, K])`` with token -1 and log-prob -inf on padding.
        """
        obs = self.encoder.encode(history, history_len, prefix, depth)
        obs_tensor, _ = self.model.policy.obs_to_tensor(obs)
        # Log-probs over all C compact actions, then renormalised over the allowed ones: exactly
        # the masked distribution MaskablePPO samples from, without building dense masks.
        logits = self.model.policy.get_distribution(obs_tensor).distribution.logits.cpu()
        tokens, valid = self.tables.allowed_padded(states)
        compact = self.token_to_compact[tokens.clamp(min=0)]
        allowed = logits.gather(1, compact).masked_fill(~valid, float("-inf"))
        return torch.where(valid, tokens, -1), torch.log_softmax(allowed, dim=1)

    def beam_search(
        self, history: np.ndarray, history_len: np.ndarray, *, width: int = 20, k: int | None = None,
        exclude_items: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Constrained beam search: the top-``k`` distinct items (terminal nodes) per request.

        A beam's score is the sum of its tokens' policy log-probs; the search stops once no live
        beam can beat the k-th finished item (log-probs only decrease). Vectorized over requests
        and beams: one policy forward per depth. ``exclude_items`` (``[R, H]``, -1 padded) are
        never returned, as in :meth:`agents.model.policy.LLMPolicy.beam_search`.

        Returns:
            ``(terminals [R, k], scores [R, k])``, best first; -1 / -inf where fewer than k items
            exist.
        """
        k = k or width
        if k > width:
            raise ValueError(f"k={k} needs a beam width of at least k, got width={width}")
        history, history_len = np.asarray(history), np.asarray(history_len)
        r, depth_max, ninf = len(history), self.tree.max_depth, float("-inf")
        states = torch.zeros(r, 1, dtype=torch.long)
        scores = torch.zeros(r, 1)
        prefix = torch.full((r, 1, depth_max), -1, dtype=torch.long)
        fin_states = torch.full((r, k), -1, dtype=torch.long)
        fin_scores = torch.full((r, k), ninf)
        excluded = None if exclude_items is None else excluded_keys(self.tree, exclude_items)
        for depth in range(depth_max):
            beams = states.shape[1]
            live = torch.isfinite(scores)
            flat = torch.where(live, states, 0).reshape(-1)
            rows = np.repeat(np.arange(r), beams)
            tokens, logp = self.token_logprobs(history[rows], history_len[rows],
                                               prefix.reshape(r * beams, -1), np.full(r * beams, depth), flat)
            logp = mask_excluded(self.tables, self.tree.num_nodes, excluded, torch.as_tensor(rows), flat,
                                 tokens, logp)
            width_k = tokens.shape[1]
            cand = (scores[..., None] + logp.reshape(r, beams, width_k)).masked_fill(~live[..., None], ninf)
            top_scores, top_idx = cand.reshape(r, -1).topk(min(width, beams * width_k), dim=1)
            parent = top_idx // width_k
            token = tokens.reshape(r, -1).gather(1, top_idx)
            valid = torch.isfinite(top_scores)
            parent_states = states.gather(1, parent).reshape(-1)
            new_states = self.tables.step(parent_states, token.reshape(-1).clamp(min=0))
            new_states = torch.where(valid.reshape(-1), new_states, 0).reshape(r, -1)
            prefix = prefix.gather(1, parent[..., None].expand(-1, -1, depth_max)).clone()
            prefix[:, :, depth] = token
            done = valid & self.tables.is_complete(new_states)
            pool_scores = torch.cat([fin_scores, top_scores.masked_fill(~done, ninf)], dim=1)
            pool_states = torch.cat([fin_states, new_states.masked_fill(~done, -1)], dim=1)
            fin_scores, best = pool_scores.topk(k, dim=1)
            fin_states = pool_states.gather(1, best)
            scores = top_scores.masked_fill(done | ~valid, ninf)
            states = new_states
            if not bool(torch.isfinite(scores).any()):
                break
            if bool((scores.max(dim=1).values <= fin_scores[:, -1]).all()):
                break  # exact: no live beam can beat the k-th finished item any more
        return fin_states.numpy(), fin_scores.numpy()

    def beam_search_rows(
        self, task: RecGenTask, rows: np.ndarray, *, width: int = 20, k: int | None = None,
        exclude_items: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`beam_search` for rows of ``task``'s split (what
        :func:`agents.training.evaluate.evaluate` calls)."""
        if task.tree.num_nodes != self.tree.num_nodes:
            raise ValueError("the task and the agent use different item tokenizations")
        ex = task.examples
        return self.beam_search(ex.history[rows], ex.history_len[rows], width=width, k=k,
                                exclude_items=exclude_items)


def train_maskable_ppo(
    train_task: RecGenTask,
    valid_task: RecGenTask | None,
    episodes: int,
    config: MaskablePPOConfig | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    eval_every_episodes: int = 0,
    eval_requests: int | None = 256,
    beam: int = 20,
    metric: str = "HR@10",
) -> tuple[MaskablePPOAgent, dict[str, Any]]:
    """Train MaskablePPO for ``episodes`` episodes on the train split; returns the agent and a summary.

    Every ``eval_every_episodes`` (and at the start and the end) the policy is validated on
    ``valid_task`` by beam search; the best weights are kept and loaded at the end. With
    ``run_dir``, ``metrics.jsonl`` gets one record per batch of rollouts (each PPO update, plus a
    last partial one when the budget ends mid-rollout; ``rollouts`` = episodes so far, ``hit_rate``,
    ``reward_mean``, ``entropy``) and the validations (``valid/HR@10``, ...).

    Example:
        >>> # agent, summary = train_maskable_ppo(train, valid, episodes=25_600, run_dir="runs/ppo")
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.training.evaluate import evaluate

    maskable_ppo = import_maskable_ppo()
    cfg = config or MaskablePPOConfig()
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    depth = train_task.max_response_len
    vec_env = DummyVecEnv([lambda: make_sb3_env(train_task, history_items=cfg.history_items,
                                                item_tokens=cfg.item_tokens, item_ids=cfg.item_ids)
                           for _ in range(cfg.num_envs)])
    model = maskable_ppo(
        "MlpPolicy", vec_env, n_steps=cfg.episodes_per_update * depth, batch_size=cfg.batch_size,
        n_epochs=cfg.epochs, gamma=1.0, gae_lambda=1.0, learning_rate=cfg.lr, ent_coef=cfg.ent_coef,
        seed=cfg.seed, device=cfg.device, policy_kwargs={"net_arch": [cfg.hidden]}, verbose=0)
    agent = MaskablePPOAgent(model, vec_env.envs[0])
    logger = MetricLogger(run_dir) if run_dir is not None else None
    # "trained": the policy changed since the last validation (a PPO update ran after a rollout).
    state: dict[str, Any] = {"episodes": 0, "batches": 0, "best": -1.0, "best_episodes": 0,
                             "best_weights": None, "history": [], "next_eval": 0, "trained": False}

    def validate() -> None:
        state["trained"] = False
        state["next_eval"] = state["episodes"] + eval_every_episodes if eval_every_episodes else episodes
        if valid_task is None:
            return
        metrics = evaluate(agent, valid_task, beam=beam, max_requests=eval_requests, seed=cfg.seed,
                           batch_size=64, progress=False)
        ranking = {k: v for k, v in metrics.items() if "@" in k}
        state["history"].append({"rollouts": state["episodes"], **ranking})
        if logger is not None:
            logger.log({**{f"valid/{k}": v for k, v in metrics.items()}, "rollouts": state["episodes"]},
                       state["batches"])
        if metrics[metric] > state["best"]:
            state.update(best=metrics[metric], best_episodes=state["episodes"],
                         best_weights=copy.deepcopy(model.policy.state_dict()))

    callback = _callback(model, state, episodes, validate, logger, cfg.progress)
    start = time.time()
    validate()
    # SID items all have one length, so the envs finish episodes in lockstep and the budget is met
    # exactly when it is a multiple of num_envs; the callback stops there (titles: within num_envs).
    model.learn(total_timesteps=episodes * depth, callback=callback)
    if state["trained"]:  # the final weights
        validate()
    if state["best_weights"] is not None:
        model.policy.load_state_dict(state["best_weights"])
    if logger is not None:
        logger.close()
    vec_env.close()
    summary = {"config": asdict(cfg), "episodes": state["episodes"], "timesteps": int(model.num_timesteps),
               "batches": state["batches"], "best_valid": state["best"],
               "best_rollouts": state["best_episodes"], "metric": metric,
               "seconds": round(time.time() - start, 2), "valid_history": state["history"]}
    return agent, summary


def _callback(
    model: Any, state: dict[str, Any], episodes: int, validate: Any, logger: MetricLogger | None,
    progress: bool,
) -> Any:
    """The SB3 callback that counts episodes, stops at the budget, logs curves and validates.

    Validation runs at the start of a rollout, i.e. after the previous rollout's PPO update, so it
    sees the weights that the episodes so far have trained.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeBudget(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=episodes, desc="maskable_ppo", disable=not progress)
            self.rollout = {"episodes": 0, "hits": 0, "rewards": 0.0}

        def _on_step(self) -> bool:
            dones = np.asarray(self.locals["dones"])
            if dones.any():
                infos = [self.locals["infos"][i] for i in np.flatnonzero(dones)]
                self.rollout["episodes"] += len(infos)
                self.rollout["hits"] += sum(bool(info.get("hit", False)) for info in infos)
                self.rollout["rewards"] += float(np.asarray(self.locals["rewards"])[dones].sum())
                state["episodes"] += len(infos)
                self.bar.update(len(infos))
            if state["episodes"] < episodes:
                return True
            # Budget reached. On a rollout's last step, let SB3 finish it and train on it (learn()
            # then ends: its timesteps are used up); mid-rollout, stop (the partial one is unused).
            if self.locals["n_steps"] + 1 >= self.locals["n_rollout_steps"]:
                return True
            self._log()
            return False

        def _on_rollout_start(self) -> None:  # after the previous rollout's PPO update
            if state["trained"] and state["episodes"] >= state["next_eval"]:
                validate()

        def _on_rollout_end(self) -> None:
            self._log()
            state["trained"] = True  # SB3 runs the update on this rollout next

        def _on_training_end(self) -> None:
            self.bar.close()

        def _log(self) -> None:
            done = self.rollout["episodes"]
            if not done:
                return
            state["batches"] += 1
            record = {"rollouts": state["episodes"], "hit_rate": self.rollout["hits"] / done,
                      "reward_mean": self.rollout["rewards"] / done, "entropy": self._entropy()}
            self.bar.set_postfix(hit=f"{record['hit_rate']:.3f}", ent=f"{record['entropy']:.2f}")
            if logger is not None:
                logger.log(record, state["batches"])
            self.rollout = {"episodes": 0, "hits": 0, "rewards": 0.0}

        @torch.no_grad()
        def _entropy(self) -> float:
            """Mean entropy of the masked policy over the states of the rollout just collected."""
            buffer = model.rollout_buffer
            filled = buffer.buffer_size if buffer.full else buffer.pos
            obs = buffer.observations[:filled].reshape(-1, buffer.observations.shape[-1])
            masks = buffer.action_masks[:filled].reshape(-1, buffer.action_masks.shape[-1])
            if len(obs) == 0:
                return float("nan")
            total = 0.0
            for start in range(0, len(obs), 512):  # chunks bound the one-hot observations' memory
                chunk, _ = model.policy.obs_to_tensor(obs[start:start + 512])
                dist = model.policy.get_distribution(chunk, action_masks=masks[start:start + 512])
                total += float(dist.entropy().sum())
            return total / len(obs)

    return EpisodeBudget()


__all__ = ["MaskablePPOAgent", "MaskablePPOConfig", "import_maskable_ppo", "train_maskable_ppo"]
