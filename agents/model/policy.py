"""An LLM policy over the catalogue's prefix tree: constrained sampling, beam search, teacher forcing.

The policy *is* the LLM: its distribution is the full-vocabulary softmax

    pi(a | x, y_<t) = exp(z_a / T) / sum_{b in V} exp(z_b / T),   z = W h   (W: output embedding)

and the prefix tree only constrains decoding (disallowed tokens get -inf). This is the objective of
D3 / BIGRec / ReRe / MiniOneRec and the RISER paper: SFT is cross-entropy over the whole vocabulary,
RL log-probs and ratios are full-vocabulary, and beams are scored with the full-vocabulary
log-softmax with disallowed tokens masked (no renormalisation, length penalty 0). Forced tokens then
carry probability < 1 and gradient, which RISER's certainty mask and KL-Cov act on.

``objective="constrained"`` is the documented switch to the renormalised distribution
pi_A(a) = exp(z_a) / sum_{b in A} exp(z_b) over the allowed tokens A, for training and scoring alike.

:class:`LLMPolicy` is composed of one unit per concern, each a mixin in its own module, all
behind this class:

* the model and its tokens (this module): construction, the decoder forward with its KV cache,
  the output layer over the whole vocabulary (:meth:`LLMPolicy.full_logits`) or the allowed tokens
  only (the sparse head, :meth:`LLMPolicy.allowed_logits`), prompt padding, item token sequences;
* constrained sampling (:mod:`agents.model.sampling`): :meth:`LLMPolicy.rollout`,
  :class:`Rollout`, :func:`make_rollout_env`;
* beam search (:mod:`agents.model.beam`): :meth:`LLMPolicy.beam_search`;
* teacher-forced scoring (:mod:`agents.model.scoring`): :meth:`LLMPolicy.sequence_logprobs`,
  :meth:`LLMPolicy.group_logprobs`, :meth:`LLMPolicy.stream_logprobs`, :func:`length_buckets`;
* persistence (:mod:`agents.model.persistence`): :meth:`LLMPolicy.from_pretrained`,
  :meth:`LLMPolicy.save_pretrained`, :meth:`LLMPolicy.load_weights`;
* adapters (:mod:`agents.model.trainable`): :meth:`LLMPolicy.add_lora`, :meth:`LLMPolicy.freeze`,
  :meth:`LLMPolicy.merged_adapters`, :meth:`LLMPolicy.merge_adapters`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.configs import MODEL_PRESETS
from agents.model.adapters import head_parts
from agents.model.beam import BeamSearch
from agents.model.kvcache import (
    reserved_cache,
    shared_prefix,
    shared_prefix_cache,
    supports_shared_prefix,
)
from agents.model.persistence import POLICY_CONFIG, PolicyPersistence
from agents.model.sampling import ConstrainedSampling, Rollout, make_rollout_env
from agents.model.scoring import (
    BUCKET_PADDING,
    OBJECTIVES,
    TeacherForcedScoring,
    _at_least_float32,
    length_buckets,
)
from agents.model.trainable import PolicyAdapters
from recgym.items import ItemTokenizer

PRESETS = MODEL_PRESETS  # Qwen2-architecture sizes for offline runs (agents.configs)
KV_ROOM = 16  # spare KV positions of a decoding cache (LLMPolicy._decoding_cache)


class LLMPolicy(PolicyPersistence, PolicyAdapters, ConstrainedSampling, BeamSearch, TeacherForcedScoring,
                nn.Module):
    """A Hugging Face causal LM that writes catalogue items inside the prefix tree.

    Args:
        model: any ``AutoModelForCausalLM``-style model with ``.model`` (the decoder returning
            ``last_hidden_state``) and output embeddings.
        items: the env's item tokenization (tokenizer, representation, template).
        device, dtype: where and in which precision to run (default: CUDA in bf16 if available).
        objective: ``"full"`` (default: the LLM's full-vocabulary distribution, the papers') or
            ``"constrained"`` (renormalised over the allowed tokens); SFT, RL and beam scoring all
            follow it, and it is saved with the policy.
        base_vocab_size: rows of the pretrained vocabulary (default: every row of the model's
            embeddings); rows beyond it (e.g. SID tokens added to a pretrained tokenizer) are the
            "new" ones that :meth:`add_lora` / :meth:`freeze` can train alone.

    Parameter-efficient training (:mod:`agents.model.adapters`): :meth:`add_lora` injects LoRA
    adapters, :meth:`freeze` trains only the top blocks or the new token rows; both save and load
    with the policy, :meth:`merged_adapters` speeds up evaluation and :meth:`merge_adapters`
    makes a plain model again. ``adapter`` records the current setting (None: all weights train).

    Each concern is a mixin of its own module (see this module's docstring); this class holds the
    model and its tokens, which every unit uses.

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
        dtype: torch.dtype | None = None, objective: str = "full", base_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}: choose one of {OBJECTIVES}")
        self.objective = objective
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
        rows = model.get_input_embeddings().weight.shape[0]
        self.base_vocab_size = rows if base_vocab_size is None else min(int(base_vocab_size), rows)
        self.adapter: dict[str, Any] | None = None  # LoRA / frozen-trunk setting (agents.model.adapters)
        # Rollouts and beam search fold LoRA into the weights while they run (1.1-1.2x faster on CPU;
        # the merged copies of the adapted weights cost their memory meanwhile): False turns it off.
        self.merge_at_inference = True
        # Teacher forcing runs rows in length buckets (:func:`length_buckets`) so that at most this
        # fraction of a bucket's tokens is padding; None pads the whole batch to its longest row.
        self.bucket_padding: float | None = BUCKET_PADDING
        # Rollouts and beam search keep each prompt's KV once and attend to it per prompt
        # (agents.model.kvcache) where the model allows; False decodes with a per-row copy of the prompt.
        self.shared_prefix = True

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, preset: str | dict[str, int], items: ItemTokenizer, *, seed: int = 0,
        max_position_embeddings: int = 2048, vocab_size: int | None = None, **kwargs: Any,
    ) -> LLMPolicy:
        """A freshly initialised Qwen2-architecture model of a named size over ``items``' vocabulary.

        ``vocab_size`` pads the embedding matrix beyond the tokenizer (e.g. 151,936 rows, as Qwen2)
        to measure what a full-vocabulary output layer costs. The input and output embeddings are
        tied unless a dict ``preset`` says ``"tie_word_embeddings": False``.

        Example:
            >>> # LLMPolicy.from_config({**PRESETS["mini"], "tie_word_embeddings": False}, task.items)
        """
        from transformers import Qwen2Config, Qwen2ForCausalLM

        sizes = PRESETS[preset] if isinstance(preset, str) else dict(preset)
        config = Qwen2Config(**{
            "vocab_size": max(vocab_size or 0, items.vocab_size),
            "max_position_embeddings": max_position_embeddings, "tie_word_embeddings": True,
            "bos_token_id": items.eos_token_id, "eos_token_id": items.eos_token_id,
            "pad_token_id": items.pad_token_id, **sizes,
        })
        torch.manual_seed(seed)
        return cls(Qwen2ForCausalLM(config), items, **kwargs)

    # -- the output layer ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    @property
    def head_weight(self) -> torch.Tensor:
        """The output layer's weight (V, H); rows trained as new-token rows are in :meth:`head_rows`."""
        return self.model.get_output_embeddings().weight

    def head_rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` of the output layer as the model uses them (trainable new-token rows included).

        Example:
            >>> # w = policy.head_rows(torch.tensor([0, 5]))  # (2, hidden)
        """
        w, rows = head_parts(self.model)
        if rows is None:
            return w[index]
        first = w.shape[0] - rows.shape[0]
        new = rows.to(w.dtype)[(index - first).clamp(min=0)]
        return torch.where((index >= first)[..., None], new, w[index])

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary, ``hidden`` (N, H) -> (N, V), at least float32.

        Example:
            >>> # logits = policy.full_logits(hidden[:, -1])
        """
        w, rows = head_parts(self.model)
        h = hidden.to(w.dtype)
        if rows is None:
            return _at_least_float32(h @ w.T)
        first = w.shape[0] - rows.shape[0]
        return _at_least_float32(torch.cat([h @ w[:first].T, h @ rows.to(w.dtype).T], dim=-1))

    @property
    def full_vocab(self) -> bool:
        """Whether log-probs are normalised over the whole vocabulary (``objective == "full"``)."""
        return self.objective == "full"

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

    @contextlib.contextmanager
    def _decoding_cache(self) -> Any:
        """An empty KV cache for one rollout or beam batch: the shared-prefix cache (and attention)
        where ``shared_prefix`` is on and the model allows it, else the reserved cache."""
        # Spare KV positions: dropping or reordering rows copies the room along, so it stays small;
        # past it a cache grows by the same room.
        room = min(self.tree.max_depth, KV_ROOM)
        if self.shared_prefix and supports_shared_prefix(self.model):
            cache = shared_prefix_cache(room)
            with shared_prefix(self.model, cache):
                yield cache
        else:
            yield reserved_cache(room)

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None, *,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """Decoder hidden states for ``input_ids`` given the full ``attention_mask`` (cache + new).

        Position ids count real tokens only, so left padding does not shift them.
        """
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        trunk = self.model.model
        out = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    use_cache=use_cache, **{_cache_keyword(type(trunk)): cache})
        return out.last_hidden_state, (out["cache"] if "cache" in out else out.past_key_values)

    def allowed_logits(
        self, hidden: torch.Tensor, states: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse head: logits of the allowed tokens only, padded to ``(tokens [N, K], logits [N, K])``.

        Logits are ``h @ W[U].T`` for the union U of allowed tokens in the batch, gathered per row;
        padding has token -1 and logit -inf. Rows must be states that are not complete.
        """
        inverse, tokens, valid, union, col = self._allowed_union(states)
        dense = hidden.to(self.head_weight.dtype) @ self.head_rows(union).T  # (N, |U|)
        logits = _at_least_float32(dense.gather(1, col[inverse]))
        if temperature != 1.0:
            logits = logits / temperature
        return tokens[inverse], logits.masked_fill(~valid[inverse], float("-inf"))

    def allowed_logsumexp(self, hidden: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``log sum_{a in A(s)} exp z_a`` per row, z = W h, A(s) the allowed tokens of state s: the
        normaliser of the constrained objective, without the padded ``(N, K)`` logits of
        :meth:`allowed_logits` (one ``(N, |U|)`` product, the disallowed entries masked).

        Example:
            >>> # log_z = policy.allowed_logsumexp(hidden, states)  # (N,)
        """
        inverse, tokens, valid, union, col = self._allowed_union(states)
        allowed = torch.zeros(len(tokens), len(union), dtype=torch.bool, device=tokens.device)
        allowed[valid.nonzero()[:, 0], col[valid]] = True  # (S, |U|): which union tokens each state allows
        dense = _at_least_float32(hidden.to(self.head_weight.dtype) @ self.head_rows(union).T)
        return dense.masked_fill(~allowed[inverse], float("-inf")).logsumexp(dim=1)

    def _allowed_union(
        self, states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(inverse [N], tokens [S, K], valid [S, K], union [U], col [S, K])`` of ``states``: the
        distinct states (row i is state ``inverse[i]``), their padded allowed tokens, the union of
        those tokens and each one's column in it. A batch holds few distinct states (one, the root,
        for one token per item), so the tables are built per distinct state, not per row."""
        distinct, inverse = torch.unique(states, return_inverse=True)
        tokens, valid = self.tables.allowed_padded(distinct)
        union, index = torch.unique(tokens[valid], return_inverse=True)
        col = torch.zeros_like(tokens)
        col[valid] = index
        return inverse, tokens, valid, union, col

    def item_responses(self, item_ids: Any) -> np.ndarray:
        """Token sequences of items, right-padded with -1: the responses for teacher forcing."""
        seqs = [self.items.sequences[int(i)] for i in np.asarray(item_ids).tolist()]
        width = max(len(s) for s in seqs)
        out = np.full((len(seqs), width), -1, dtype=np.int64)
        for i, s in enumerate(seqs):  # per item (not a hot path): building padded targets
            out[i, : len(s)] = s
        return out


@functools.cache
def _cache_keyword(trunk_class: type) -> str:
    """The KV cache's argument name: ``cache`` since transformers 5.x (``past_key_values`` deprecated
    there), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(trunk_class.forward).parameters else "past_key_values"


__all__ = [
    "BUCKET_PADDING", "KV_ROOM", "OBJECTIVES", "POLICY_CONFIG", "PRESETS", "LLMPolicy", "Rollout",
    "length_buckets", "make_rollout_env",
]
