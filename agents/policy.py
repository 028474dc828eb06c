"""An LLM policy over the catalogue's prefix tree: constrained sampling, beam search, teacher forcing.

The policy *is* the constrained distribution: at a tree node with allowed tokens A,

    pi(a | x, y_<t) = exp(z_a / T) / sum_{b in A} exp(z_b / T),   z = W h   (W: output embedding)

so log-probs are normalised over the allowed tokens only, in rollouts, beam search and teacher
forcing alike. Two savings follow and both are used everywhere:

* **sparse head**: logits are computed only for the union of the allowed tokens in the batch
  (``h @ W[U].T``), never for the whole vocabulary (151,936 rows for Qwen2);
* **shared prompt**: a group of n rollouts of one request runs the prompt once; its KV cache is
  expanded n ways (``DynamicCache.batch_repeat_interleave``) and the first token's distribution,
  which depends on the prompt only, is computed once per group.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn

from agents.configs import MODEL_PRESETS
from recgym.data import Dataset, Examples
from recgym.envs.task import RecGenTask
from recgym.envs.vector import RecGenVectorEnv
from recgym.items import ItemTokenizer

PRESETS = MODEL_PRESETS  # Qwen2-architecture sizes for offline runs (agents.configs)
POLICY_CONFIG = "recgym_policy.json"


@dataclass
class Rollout:
    """A batch of finished episodes, ready for learners (tensors on the policy's device).

    Row i is slot i of the vector env; groups of ``group_size`` consecutive rows share a request.

    Attributes:
        prompt_ids: (R, P) left-padded prompts of the R distinct requests; ``prompt_mask`` (R, P).
        tokens: (B, T) generated tokens, right-padded with the pad token; ``mask`` (B, T) real ones.
        logprobs: (B, T) constrained log-probs of the sampled tokens under the sampling policy.
        states: (B, T) tree node each token was generated from (-1 on padding).
        rewards, hits: (B,) from the env; ``terminal``: (B,) final tree node (-1 if invalid).
        rows, targets: (B,) request row in the split and target item.
        group_size: n.
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


class LLMPolicy(nn.Module):
    """A Hugging Face causal LM that writes catalogue items inside the prefix tree.

    Args:
        model: any ``AutoModelForCausalLM``-style model with ``.model`` (the decoder returning
            ``last_hidden_state``) and output embeddings.
        items: the env's item tokenization (tokenizer, representation, template).
        device, dtype: where and in which precision to run (default: CUDA in bf16 if available).

    Example:
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = LLMPolicy.from_config("tiny", task.items, seed=0)
        >>> ranked, scores = policy.beam_search(*task.prompt_tokens(np.arange(2)), width=5)
        >>> ranked.shape
        (2, 5)
    """

    def __init__(
        self, model: nn.Module, items: ItemTokenizer, *, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if dtype is None:
            bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
            dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = model.to(device=device, dtype=dtype)
        self.items = items
        self.tree = items.build_tree()
        self.tables = self.tree.torch_tables(device)
        head = model.get_output_embeddings()
        if head.weight.shape[0] < self.tree.vocab_size:
            raise ValueError(f"the model's output layer has {head.weight.shape[0]} rows, fewer than the "
                             f"tokenizer's {self.tree.vocab_size} tokens: resize its embeddings")
        if getattr(head, "bias", None) is not None:
            raise ValueError("output layers with a bias are not supported by the sparse head")

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, preset: str | dict[str, int], items: ItemTokenizer, *, seed: int = 0,
        max_position_embeddings: int = 2048, vocab_size: int | None = None, **kwargs: Any,
    ) -> LLMPolicy:
        """A freshly initialised Qwen2-architecture model of a named size over ``items``' vocabulary.

        ``vocab_size`` pads the embedding matrix beyond the tokenizer (e.g. 151,936 rows, as Qwen2)
        to measure what a full-vocabulary output layer costs.
        """
        from transformers import Qwen2Config, Qwen2ForCausalLM

        sizes = PRESETS[preset] if isinstance(preset, str) else dict(preset)
        config = Qwen2Config(
            vocab_size=max(vocab_size or 0, items.vocab_size),
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=True, bos_token_id=items.eos_token_id, eos_token_id=items.eos_token_id,
            pad_token_id=items.pad_token_id, **sizes,
        )
        torch.manual_seed(seed)
        return cls(Qwen2ForCausalLM(config), items, **kwargs)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], items: ItemTokenizer | None = None, **kwargs: Any
    ) -> LLMPolicy:
        """Load a model from a local folder or hub name.

        A folder written by :meth:`save_pretrained` also restores the tokenizer, representation,
        template and catalogue (so the env's tree is rebuilt); for any other model pass ``items``.
        """
        from transformers import AutoModelForCausalLM

        path_ = Path(path)
        if items is None:
            if not (path_ / POLICY_CONFIG).exists():
                raise ValueError(f"{path}: no {POLICY_CONFIG}; pass items=ItemTokenizer(...) for this model")
            catalogue = Dataset.load(path_ / "catalogue.npz").catalogue
            items = ItemTokenizer.load(path_, catalogue)
        model = AutoModelForCausalLM.from_pretrained(path)
        return cls(model, items, **kwargs)

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Save model (safetensors), tokenizer, item config and catalogue; the last file marks completion."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.items.save(path)
        empty = Examples.empty(1)
        Dataset("catalogue", self.items.catalogue, empty, empty, empty).save(path / "catalogue.npz")
        tmp = path / (POLICY_CONFIG + ".tmp")
        tmp.write_text(json.dumps({"format": 1, "representation": self.items.representation}))
        os.replace(tmp, path / POLICY_CONFIG)
        return path

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    # -- model pieces ----------------------------------------------------------------------------

    def left_pad(self, prompt_ids: Any, prompt_len: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded env prompts -> left-padded (ids, attention mask) trimmed to the longest."""
        ids = torch.as_tensor(np.asarray(prompt_ids), device=self.device)
        lens = torch.as_tensor(np.asarray(prompt_len), device=self.device)
        width = int(lens.max())
        shift = torch.arange(width, device=self.device) - (width - lens)[:, None]
        mask = shift >= 0
        left = ids.gather(1, shift.clamp(min=0)).masked_fill(~mask, self.items.pad_token_id)
        return left, mask.long()

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None, *,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """Decoder hidden states for ``input_ids`` given the full ``attention_mask`` (cache + new).

        Position ids count real tokens only, so left padding does not shift them.
        """
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        out = self.model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                               past_key_values=cache, use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    def allowed_logits(
        self, hidden: torch.Tensor, states: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse head: logits of the allowed tokens only, padded to ``(tokens [N, K], logits [N, K])``.

        Logits are ``h @ W[U].T`` for the union U of allowed tokens in the batch, gathered per row;
        padding has token -1 and logit -inf. Rows must be states that are not complete.
        """
        tokens, valid = self.tables.allowed_padded(states)
        union, inverse = torch.unique(tokens[valid], return_inverse=True)
        dense = hidden.to(self.head_weight.dtype) @ self.head_weight[union].T  # (N, |U|)
        col = torch.zeros_like(tokens)
        col[valid] = inverse
        logits = _at_least_float32(dense.gather(1, col)) / temperature
        return tokens, logits.masked_fill(~valid, float("-inf"))

    # -- rollouts --------------------------------------------------------------------------------

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
        """
        if envs.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError("rollout needs a vector env with autoreset_mode='disabled'")
        if envs.task.items is not self.items and envs.task.tree.num_nodes != self.tree.num_nodes:
            raise ValueError("the env and the policy use different item tokenizations")
        options: dict[str, Any] = {"group_size": group_size}
        if rows is not None:
            options["rows"] = rows
        obs, info = envs.reset(seed=seed, options=options)
        n, b = group_size, envs.num_envs
        prompt_ids, prompt_mask = self.left_pad(obs["prompt_ids"][::n], obs["prompt_len"][::n])
        hidden, cache = self._forward(prompt_ids, prompt_mask)
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

    # -- beam search -----------------------------------------------------------------------------

    @torch.no_grad()
    def beam_search(
        self, prompt_ids: Any, prompt_len: Any, *, width: int = 20, k: int | None = None,
        length_normalize: bool = False, batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Constrained beam search: the top-``k`` distinct items (terminal nodes) per prompt.

        Scores are summed constrained log-probs (divided by the length with ``length_normalize``).
        Every terminal is a distinct token sequence, i.e. a distinct title / SID (which may denote
        several items: ``self.tree.items(node)``). Beams are pruned exactly: search stops once no
        unfinished beam can beat the k-th finished one (log-probs only decrease).

        Returns:
            ``(terminals [R, k], scores [R, k])`` as numpy arrays, best first; -1 / -inf where fewer
            than k items were found.
        """
        k = k or width
        if k > width:
            raise ValueError(f"k={k} needs a beam width of at least k, got width={width}")
        prompt_ids, prompt_len = np.asarray(prompt_ids), np.asarray(prompt_len)
        step = batch_size or len(prompt_ids)
        parts = [self._beam_batch(prompt_ids[i:i + step], prompt_len[i:i + step], width, k, length_normalize)
                 for i in range(0, len(prompt_ids), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _beam_batch(
        self, prompt_ids: np.ndarray, prompt_len: np.ndarray, w: int, k: int, normalize: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        r, dev, ninf = len(prompt_ids), self.device, float("-inf")
        ids, attn = self.left_pad(prompt_ids, prompt_len)
        hidden, cache = self._forward(ids, attn)
        h = hidden[:, -1]
        # Beams: (R, W) states and scores; start with one live beam per request at the root.
        states = torch.zeros(r, 1, dtype=torch.long, device=dev)
        scores = torch.zeros(r, 1, device=dev)
        lengths = torch.zeros(r, 1, device=dev)
        fin_states = torch.full((r, k), -1, dtype=torch.long, device=dev)
        fin_scores = torch.full((r, k), ninf, device=dev)
        beams = 1
        for _ in range(self.tree.max_depth):
            live = torch.isfinite(scores)  # (R, beams)
            flat_states = states.reshape(-1)
            tokens, logits = self.allowed_logits(h, torch.where(live.reshape(-1), flat_states, 0))
            logp = torch.log_softmax(logits, dim=-1).reshape(r, beams, -1)
            cand_scores = (scores[..., None] + logp).masked_fill(~live[..., None], ninf)  # (R, beams, K)
            width_k = cand_scores.shape[-1]
            top_scores, top_idx = cand_scores.reshape(r, -1).topk(min(w, beams * width_k), dim=1)
            parent = top_idx // width_k
            token = tokens.reshape(r, -1).gather(1, top_idx)
            parent_states = states.gather(1, parent).reshape(-1)
            new_states = self.tables.step(parent_states, token.reshape(-1).clamp(min=0)).reshape(r, -1)
            new_len = lengths.gather(1, parent) + 1
            valid = torch.isfinite(top_scores)
            done = valid & self.tables.is_complete(new_states.clamp(min=0))
            # Move complete hypotheses into the finished pool (best k per request).
            ranked = top_scores / new_len if normalize else top_scores
            pool_scores = torch.cat([fin_scores, ranked.masked_fill(~done, ninf)], dim=1)
            pool_states = torch.cat([fin_states, new_states.masked_fill(~done, -1)], dim=1)
            fin_scores, best = pool_scores.topk(k, dim=1)
            fin_states = pool_states.gather(1, best)
            scores = top_scores.masked_fill(done | ~valid, ninf)
            states, lengths = new_states.clamp(min=0), new_len
            still = torch.isfinite(scores)
            if not bool(still.any()):
                break
            if not normalize:  # exact stop: no live beam can beat the k-th finished item any more
                bound = scores.max(dim=1).values
                if bool((bound <= fin_scores[:, -1]).all()):
                    break
            # Reorder the cache to the surviving parents and feed the chosen tokens.
            beams = scores.shape[1]
            prev_beams = attn.shape[0] // r
            rows = (torch.arange(r, device=dev)[:, None] * prev_beams + parent).reshape(-1)
            if prev_beams == 1:
                cache.batch_repeat_interleave(beams)
                attn = attn.repeat_interleave(beams, dim=0)
            else:
                cache.reorder_cache(rows)
                attn = attn[rows]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            hidden, cache = self._forward(token.reshape(-1, 1).clamp(min=0), attn, cache)
            h = hidden[:, -1]
        return fin_states.cpu().numpy(), fin_scores.float().cpu().numpy()

    # -- teacher forcing -------------------------------------------------------------------------

    def sequence_logprobs(
        self, prompt_ids: Any, prompt_len: Any, responses: torch.Tensor | np.ndarray,
        temperature: float = 1.0, *, full_vocab: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Constrained log-probs and entropies of given responses, batched (gradients flow).

        ``responses`` (B, T) are token sequences from the root, right-padded with -1.
        One forward over ``[left-padded prompt; response]`` per row: the straightforward way.
        :meth:`group_logprobs` gives the same numbers with one prompt forward per request.
        ``full_vocab=True`` normalises over the whole vocabulary instead (as TRL / ReRe train).

        Returns:
            ``(logprobs [B, T], entropies [B, T], mask [B, T])``; zeros on padding.
        """
        resp, states, mask = self._responses(responses)
        ids, attn = self.left_pad(prompt_ids, prompt_len)
        full_ids = torch.cat([ids, resp.clamp(min=0)], dim=1)
        full_attn = torch.cat([attn, mask.long()], dim=1)
        hidden, _ = self._forward(full_ids, full_attn, use_cache=False)
        # The hidden state before token t predicts token t: positions P-1 .. P+T-2.
        p = ids.shape[1]
        h = hidden[:, p - 1: p - 1 + resp.shape[1]]
        return self._scatter_token_logprobs(h, states, resp, mask, temperature, full_vocab)

    def group_logprobs(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor | np.ndarray,
        prompt_index: torch.Tensor | np.ndarray, temperature: float = 1.0, *, full_vocab: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sequence_logprobs` with a **shared prompt**: one prompt forward per request.

        ``prompt_ids``/``prompt_mask`` (R, P) are left-padded prompts (as in :class:`Rollout`);
        response row b belongs to prompt ``prompt_index[b]``. Each prompt runs once, its KV cache
        is expanded to its responses by an index (gradients flow back through the expansion), and
        the first token's distribution, which depends on the prompt alone, is computed once per
        prompt. Only the responses run per row; logits are computed for allowed tokens only.

        Example:
            >>> # logp, ent, mask = policy.group_logprobs(ro.prompt_ids, ro.prompt_mask, responses,
            >>> #                                         np.repeat(np.arange(R), n))
        """
        resp, states, mask = self._responses(responses)
        index = _as_long(prompt_index, self.device)
        hidden, cache = self._forward(prompt_ids, prompt_mask)
        # Token 0: its distribution depends on the prompt alone (every row starts at the root), so
        # it is computed once per prompt (R rows, not B) and gathered for each response.
        root = torch.zeros(len(hidden), dtype=torch.long, device=self.device)
        logp0_all, ent0 = self._token_logprobs(hidden[:, -1], root, None, temperature, full_vocab)
        first = resp[:, 0].clamp(min=0)
        col0 = first if full_vocab else _column_of(self.tables.allowed_padded(root[:1])[0], first)
        logp0 = torch.where(mask[:, 0], logp0_all[index, col0], 0.0)[:, None]
        ent0 = torch.where(mask[:, 0], ent0[index], 0.0)[:, None]
        if resp.shape[1] == 1:
            return logp0, ent0, mask
        # Tokens 1..T-1: the prompt's KV cache is expanded to the responses by an index
        # (index_select: gradients flow back into the shared prompt), then only responses run.
        cache.reorder_cache(index)
        attn = torch.cat([prompt_mask[index], mask[:, :-1].long()], dim=1)
        h, _ = self._forward(resp[:, :-1].clamp(min=0), attn, cache)  # h[:, t-1] predicts token t
        logp, ent, _ = self._scatter_token_logprobs(
            h, states[:, 1:], resp[:, 1:], mask[:, 1:], temperature, full_vocab)
        return torch.cat([logp0, logp], dim=1), torch.cat([ent0, ent], dim=1), mask

    def _responses(self, responses: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Responses as a device tensor, their tree states (-1 on padding) and mask."""
        resp = _as_long(responses, self.device)
        states = torch.as_tensor(self.tree.path_states(resp.cpu().numpy()), device=self.device)
        return resp, states, states >= 0

    def _token_logprobs(
        self, h: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor | None, temperature: float,
        full_vocab: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position: log-prob of ``tokens`` (or all allowed ones when None) and the entropy.

        Constrained: the sparse head over the allowed tokens of ``states``; ``full_vocab``: the
        whole output layer.
        """
        if full_vocab:
            logits = _at_least_float32(h.to(self.head_weight.dtype) @ self.head_weight.T) / temperature
            logp_all = torch.log_softmax(logits, dim=-1)
            ent = -(logp_all.exp() * logp_all).sum(dim=1)
            return (logp_all if tokens is None else logp_all.gather(1, tokens[:, None]).squeeze(1)), ent
        allowed, logits = self.allowed_logits(h, states, temperature)
        logp_all = torch.log_softmax(logits, dim=-1)
        ent = -(logp_all.exp() * logp_all.masked_fill(~torch.isfinite(logp_all), 0)).sum(dim=1)
        if tokens is None:
            return logp_all, ent
        return logp_all.gather(1, _column_of(allowed, tokens)[:, None]).squeeze(1), ent

    def _scatter_token_logprobs(
        self, h: torch.Tensor, states: torch.Tensor, resp: torch.Tensor, mask: torch.Tensor,
        temperature: float, full_vocab: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs / entropies of ``resp`` (hidden states ``h`` (B, T, H)) at ``mask``, zeros elsewhere."""
        logp_m, ent_m = self._token_logprobs(h[mask], states[mask], resp[mask], temperature, full_vocab)
        logp = torch.zeros(mask.shape, device=self.device, dtype=logp_m.dtype)
        ent = torch.zeros_like(logp)
        logp[mask] = logp_m
        ent[mask] = ent_m
        return logp, ent, mask

    def item_responses(self, item_ids: Any) -> np.ndarray:
        """Token sequences of items, right-padded with -1: the responses for teacher forcing."""
        seqs = [self.items.sequences[int(i)] for i in np.asarray(item_ids).tolist()]
        width = max(len(s) for s in seqs)
        out = np.full((len(seqs), width), -1, dtype=np.int64)
        for i, s in enumerate(seqs):  # per item (not a hot path): building padded targets
            out[i, : len(s)] = s
        return out


def _as_long(values: Any, device: torch.device) -> torch.Tensor:
    """An int64 tensor on ``device`` from a tensor, array or list."""
    return torch.as_tensor(values if torch.is_tensor(values) else np.asarray(values), device=device).long()


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go to float32 for the softmax; float64 (gradient checks) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _column_of(allowed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Column of each token in its row of padded allowed tokens (``allowed`` (N, K), or (1, K) shared)."""
    return (allowed == tokens[:, None]).float().argmax(dim=1)


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


__all__ = ["PRESETS", "LLMPolicy", "Rollout", "make_rollout_env"]
