"""Constrained sampling: rollouts of an :class:`~agents.model.policy.LLMPolicy` inside the prefix tree.

:class:`ConstrainedSampling` (mixed into ``LLMPolicy``) drives a vector env built by
:func:`make_rollout_env` and returns the episodes as a :class:`Rollout`; each token is drawn from
the allowed tokens of its tree node.

Sampling from the allowed set is the same draw under either objective (masking the full softmax and
renormalising give the same categorical), so rollouts use these savings everywhere:

* **sparse head**: logits are computed only for the union of the allowed tokens in the batch
  (``h @ W[U].T``, :meth:`~agents.model.policy.LLMPolicy.allowed_logits`), never for the whole
  vocabulary (151,936 rows for Qwen2);
* **shared prompt**: a group of n rollouts of one request runs the prompt once; its KV cache is
  expanded n ways (``DynamicCache.batch_repeat_interleave``) and the first token's distribution,
  which depends on the prompt only, is computed once per group;
* **shared-prefix KV cache** (:mod:`agents.model.kvcache`): decoding keeps each prompt's keys and
  values once and attends to them per prompt, and writes each new token into room allocated
  once instead of concatenating, i.e. copying, the cache at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from recgym.envs.task import RecGenTask
from recgym.envs.vector import RecGenVectorEnv


@dataclass
class Rollout:
    """A batch of finished episodes, ready for learners (tensors on the policy's device).

    Row i is slot i of the vector env; groups of ``group_size`` consecutive rows share a request.

    Attributes:
        prompt_ids: (R, P) left-padded prompts of the R distinct requests; ``prompt_mask`` (R, P).
        tokens: (B, T) generated tokens, right-padded with the pad token; ``mask`` (B, T) real ones.
        logprobs: (B, T) log-probs of the sampled tokens renormalised over the allowed tokens (the
            sampling distribution; learners recompute the objective's log-probs in the update).
        states: (B, T) tree node each token was generated from (-1 on padding).
        rewards, hits: (B,) from the env; ``terminal``: (B,) final tree node (-1 if invalid).
        rows, targets: (B,) request row in the split and target item.
        group_size: n.

    Example:
        >>> # ro = policy.rollout(make_rollout_env(task, 8), group_size=4)
        >>> # ro.tokens[ro.mask], ro.rewards.view(-1, ro.group_size).mean(dim=1)  # per request
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    states: torch.Tensor
    rewards: torch.Tensor
    hits: torch.Tensor
    terminal: torch.Tensor
    rows: np.ndarray
    targets: np.ndarray
    group_size: int

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class ConstrainedSampling:
    """Constrained sampling, mixed into :class:`~agents.model.policy.LLMPolicy`: :meth:`rollout`.

    Needs from the class it is mixed into: ``items`` (the item tokenization), ``tree`` and
    ``tables`` (the prefix tree and its tensors), ``device``, and the methods ``left_pad``,
    ``_forward``, ``allowed_logits``, ``_decoding_cache`` (the model's side, :mod:`agents.model.policy`)
    and ``_inference_merge`` (:mod:`agents.model.trainable`).

    Example:
        >>> from agents.model.policy import LLMPolicy
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
        >>> ro = policy.rollout(make_rollout_env(task, 4), group_size=2, seed=0)
        >>> ro.tokens.shape[0], ro.prompt_ids.shape[0], ro.group_size
        (4, 2, 2)
    """

    @torch.no_grad()
    def rollout(
        self,
        envs: RecGenVectorEnv,
        *,
        group_size: int = 1,
        rows: np.ndarray | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Rollout:
        """Sample one item per slot by driving ``envs`` (autoreset ``"disabled"``) through its API.

        ``reset(options={"group_size": n, "rows": rows})`` -> one prefill per distinct request ->
        constrained sampling step by step (``envs.step``) until every slot's episode has ended.
        ``top_k`` is off unless asked (never inherited from a generation config).

        Example:
            >>> # ro = policy.rollout(make_rollout_env(task, 16), group_size=4, temperature=1.0)
        """
        if envs.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError("rollout needs a vector env with autoreset_mode='disabled'")
        if envs.task.items is not self.items and envs.task.tree.num_nodes != self.tree.num_nodes:
            raise ValueError("the env and the policy use different item tokenizations")
        options: dict[str, Any] = {"group_size": group_size}
        if rows is not None:
            options["rows"] = rows
        with self._inference_merge(), self._decoding_cache() as cache:
            return self._rollout(envs, options, group_size, temperature, top_k, generator, seed, cache)

    def _rollout(
        self, envs: RecGenVectorEnv, options: dict[str, Any], group_size: int, temperature: float,
        top_k: int | None, generator: torch.Generator | None, seed: int | None, cache: Any,
    ) -> Rollout:
        obs, info = envs.reset(seed=seed, options=options)
        n, b = group_size, envs.num_envs
        prompt_ids, prompt_mask = self.left_pad(obs["prompt_ids"][::n], obs["prompt_len"][::n])
        hidden, cache = self._forward(prompt_ids, prompt_mask, cache)
        # First token: its distribution depends on the prompt only -> computed once per group.
        root = torch.zeros(len(prompt_ids), dtype=torch.long, device=self.device)
        tokens0, logits0 = self.allowed_logits(hidden[:, -1], root, temperature)
        cache.batch_repeat_interleave(n)
        attn = prompt_mask.repeat_interleave(n, dim=0)
        cand, logits = tokens0.repeat_interleave(n, dim=0), logits0.repeat_interleave(n, dim=0)

        depth = self.tree.max_depth
        out_tokens = torch.full((b, depth), self.items.pad_token_id, dtype=torch.long, device=self.device)
        out_logp = torch.zeros(b, depth, device=self.device)
        out_states = torch.full((b, depth), -1, dtype=torch.long, device=self.device)
        states = torch.zeros(b, dtype=torch.long, device=self.device)
        alive = torch.arange(b, device=self.device)  # slots still generating (rows of the cache)
        rewards = np.zeros(b)
        for t in range(depth):
            logp = torch.log_softmax(_top_k(logits, top_k), dim=-1)
            pick = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            token = cand.gather(1, pick[:, None]).squeeze(1)
            out_tokens[alive, t] = token
            out_logp[alive, t] = logp.gather(1, pick[:, None]).squeeze(1).float()
            out_states[alive, t] = states[alive]
            states[alive] = self.tables.step(states[alive], token)
            actions = np.zeros(b, dtype=np.int64)
            actions[alive.cpu().numpy()] = token.cpu().numpy()
            _, r, terminated, _, info = envs.step(actions)
            rewards += r
            still = ~torch.as_tensor(terminated, device=self.device)[alive]
            if not bool(still.any()):
                break
            keep = torch.nonzero(still).squeeze(1)
            if len(keep) < len(alive):  # drop finished rows from the cache: compute stays proportional
                cache.batch_select_indices(keep)
                attn, alive, token = attn[keep], alive[keep], token[keep]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            hidden, cache = self._forward(token[:, None], attn, cache)
            cand, logits = self.allowed_logits(hidden[:, -1], states[alive], temperature)
        mask = out_states >= 0
        length = int(mask.sum(dim=1).max())
        terminal = torch.where(self.tables.is_complete(states), states, torch.full_like(states, -1))
        return Rollout(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=out_tokens[:, :length],
            mask=mask[:, :length], logprobs=out_logp[:, :length], states=out_states[:, :length],
            rewards=torch.as_tensor(rewards, dtype=torch.float32, device=self.device),
            hits=torch.as_tensor(info["hit"], device=self.device), terminal=terminal,
            rows=info["row"].copy(), targets=info["target"].copy(), group_size=n,
        )


def _top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def make_rollout_env(task: RecGenTask, num_envs: int, env_id: str = "RecGen-v0") -> RecGenVectorEnv:
    """The vector env learners drive: ``gym.make_vec`` of ``env_id`` through its ``vector_entry_point``.

    Disabled autoreset and no dense masks (policies build masks from the tree). ``task`` already
    holds the data, so the spec's own data keywords are dropped; a registered variant with its own
    vector class gets that class.

    Example:
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> type(make_rollout_env(task, 4)).__name__
        'RecGenVectorEnv'
    """
    import dataclasses

    import gymnasium as gym

    import recgym  # noqa: F401  (registers the ids)

    spec = dataclasses.replace(gym.spec(env_id), kwargs={})
    if spec.vector_entry_point is None:
        raise ValueError(f"env {env_id!r} has no vector_entry_point: register one to train on it")
    return gym.make_vec(spec, num_envs=num_envs, vectorization_mode="vector_entry_point", task=task,
                        autoreset_mode="disabled", dense_masks=False)


__all__ = ["ConstrainedSampling", "Rollout", "make_rollout_env"]
