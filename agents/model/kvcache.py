"""KV caches for decoding many rows from few prompts: reserved room, and a shared prefix.

Rollouts decode n samples per prompt and beam search k beams per prompt. Hugging Face's
``DynamicCache`` serves them by copying: the prompt's keys and values are repeated once per row
(``batch_repeat_interleave``), every decoding step concatenates (copies) the whole cache, and
dropping or reordering rows copies it again; attention then reads each row's copy of the prompt.

* :func:`reserved_cache`: each layer's keys and values live in buffers with room for more
  tokens; a step writes its token in place.
* :func:`shared_prefix_cache`: the prompt's keys and values are kept **once per prompt**, and
  each row holds only its own generated tokens (in reserved buffers); row ``b`` belongs to prompt
  ``group[b]``. Attention (:func:`shared_prefix_attention`, registered with transformers'
  ``AttentionInterface`` while :func:`shared_prefix` is active) computes the query-prompt scores
  with one matmul per prompt over its rows' queries, the query-own-tokens scores per row, one
  softmax over both, and the two weighted sums: the prompt's keys and values are read once per
  prompt instead of once per row, and repeating, dropping or reordering rows copies only the
  generated tokens.

Both need cache layer classes (transformers >= 4.56); the shared prefix also the attention and
mask interfaces, a model whose attention is ``sdpa`` and of a family whose attention is plain
scaled dot-product (:data:`SHARED_PREFIX_MODELS`). Otherwise the policy decodes as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch

ATTENTION = "recgym_shared_prefix"  # the name registered with transformers' attention interfaces
# Model families whose attention is softmax(q k^T * scale + mask) v with grouped KV heads and
# nothing else (no soft-capping, sinks, ALiBi or sliding windows).
SHARED_PREFIX_MODELS = ("llama", "qwen2", "qwen3", "mistral")
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("recgym_shared_prefix_cache", default=None)


def reserved_cache(room: int) -> Any:
    """An empty KV cache whose layers keep ``room`` spare positions for decoding (None before
    transformers 4.56, whose caches have no layer classes: the model then makes its own).

    Decoding one token at a time, a ``DynamicCache`` concatenates each layer's keys and values with
    the new ones, i.e. copies the whole cache at every step; these layers write the new token into
    room allocated once (again only when rows are dropped or reordered, which copy anyway).

    Example:
        >>> cache = reserved_cache(8)
        >>> k = torch.zeros(2, 1, 5, 4)
        >>> keys, _ = cache.update(k, k, 0)
        >>> keys.shape, cache.layers[0].capacity
        (torch.Size([2, 1, 5, 4]), 13)
    """
    classes = _layer_classes()
    if classes is None:  # pragma: no cover - transformers < 4.56
        return None
    return _cache_of(functools.partial(classes[0], room=room))


def shared_prefix_cache(room: int) -> Any:
    """An empty KV cache that keeps the prompt once per prompt and each row's own tokens apart.

    The first forward (the prefill, one row per prompt) stores the prompt; then
    ``batch_repeat_interleave(n)`` (n rows per prompt), ``reorder_cache(rows)`` or
    ``batch_select_indices(rows)`` map rows to prompts without copying the prompt, and each
    decoding step appends to the rows' own tokens (with ``room`` spare positions). Decode under
    :func:`shared_prefix`. None where transformers lacks cache layer classes.

    Example:
        >>> cache = shared_prefix_cache(4)
        >>> prompt = torch.randn(2, 1, 5, 8)  # 2 prompts, 1 KV head, 5 tokens
        >>> _ = cache.update(prompt, prompt, 0)
        >>> cache.batch_repeat_interleave(3)  # 3 rows per prompt: nothing copied
        >>> cache.layers[0].group.tolist(), cache.get_seq_length()
        ([0, 0, 0, 1, 1, 1], 5)
    """
    classes = _layer_classes()
    if classes is None:  # pragma: no cover - transformers < 4.56
        return None
    return _cache_of(functools.partial(classes[1], room=room))


def supports_shared_prefix(model: Any) -> bool:
    """Whether ``model`` can decode with :func:`shared_prefix_cache` (see the module's notes).

    Example:
        >>> from agents.configs import MODEL_PRESETS
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> supports_shared_prefix(Qwen2ForCausalLM(Qwen2Config(**MODEL_PRESETS["tiny"], vocab_size=64)))
        True
    """
    config = getattr(model, "config", None)
    if config is None or _register() is None:
        return False
    sliding = getattr(config, "use_sliding_window", False) or (
        getattr(config, "model_type", None) == "mistral" and getattr(config, "sliding_window", None))
    return (getattr(config, "model_type", None) in SHARED_PREFIX_MODELS
            and getattr(config, "_attn_implementation", None) == "sdpa" and not sliding)


@contextlib.contextmanager
def shared_prefix(model: Any, cache: Any) -> Iterator[None]:
    """Run ``model``'s attention as :func:`shared_prefix_attention` over ``cache`` meanwhile.

    Example:
        >>> # cache = shared_prefix_cache(16)
        >>> # with shared_prefix(model, cache): ...prefill, batch_repeat_interleave, decode...
    """
    _register()
    config = model.config
    previous = config._attn_implementation
    token = _ACTIVE.set(cache)
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
        _ACTIVE.reset(token)


def shared_prefix_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one decoding step over [the row's prompt (shared); the row's own tokens].

    ``query`` (B, H, 1, d); ``key``/``value`` (B, h, t, d): the rows' own tokens (this step's
    included); the prompts' keys/values (R, h, P, d) and each row's prompt ``group`` (B,) are in the
    active cache's layer. ``attention_mask`` is transformers' sdpa mask (B, 1, 1, P + t): True
    where a key may be attended (or None: all). With G = H / h query heads per KV head:

        s_prompt = q K_P[group]^T * scale   computed per prompt r: Q_r (rows of r) @ K_P[r]^T
        s_own    = q K_own^T * scale         per row
        a = softmax([s_prompt; s_own] masked);   out = a_P V_P[group] + a_own V_own

    The prefill (no group yet) is plain sdpa over what the cache returned (the prompt itself).
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cache = _ACTIVE.get()
    layer = cache.layers[module.layer_idx] if cache is not None else None
    if layer is None or getattr(layer, "group", None) is None:  # the prefill: ordinary attention
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                               dropout=dropout, **kwargs)
    if query.shape[2] != 1:
        raise ValueError("shared-prefix attention decodes one token per row at a time")
    if dropout or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError("shared-prefix attention supports plain softmax attention only")
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    g = heads // kv_heads  # query heads per KV head (GQA): head j*g + i reads KV head j
    scale = d ** -0.5 if scaling is None else scaling
    k_p, v_p, group = layer.prompt_keys, layer.prompt_values, layer.group
    r, p = k_p.shape[0], k_p.shape[2]
    q = query.reshape(b, kv_heads, g, d)
    # Rows laid out per prompt: slot of each row among its prompt's rows, C = the most rows of one prompt.
    counts = torch.bincount(group, minlength=r)
    order = torch.argsort(group, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(group)
    slot[order] = torch.arange(b, device=group.device) - starts[group[order]]
    c = int(counts.max())
    per_prompt = q.new_zeros(r, c, kv_heads, g, d)
    per_prompt[group, slot] = q
    q_r = per_prompt.permute(0, 2, 1, 3, 4).reshape(r, kv_heads, c * g, d)
    s_prompt = (q_r @ k_p.transpose(-1, -2)).reshape(r, kv_heads, c, g, p).permute(0, 2, 1, 3, 4)[group, slot]
    s_own = q @ key.transpose(-1, -2)  # (B, h, G, t)
    scores = torch.cat([s_prompt, s_own], dim=-1).float() * scale  # (B, h, G, P + t)
    if attention_mask is not None:
        mask = attention_mask.reshape(b, 1, 1, -1)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1).to(query.dtype)
    a_prompt, a_own = weights[..., :p], weights[..., p:]
    per_prompt_w = weights.new_zeros(r, c, kv_heads, g, p)
    per_prompt_w[group, slot] = a_prompt
    w_r = per_prompt_w.permute(0, 2, 1, 3, 4).reshape(r, kv_heads, c * g, p)
    out_prompt = (w_r @ v_p).reshape(r, kv_heads, c, g, d).permute(0, 2, 1, 3, 4)[group, slot]
    out = out_prompt + a_own @ value  # (B, h, G, d)
    return out.reshape(b, 1, heads, d), None


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """A KV cache's tensors, ``[k0, v0, k1, v1, ...]`` (each (B, heads, seq, dim)).

    Example:
        >>> cache = cache_from_tensors([torch.zeros(2, 1, 3, 4), torch.ones(2, 1, 3, 4)], None)
        >>> [x.sum().item() for x in cache_tensors(cache)]
        [0.0, 24.0]
    """
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [x for layer in cache.layers for x in (layer.keys, layer.values)]
    return [x for pair in zip(cache.key_cache, cache.value_cache) for x in pair]


def cache_from_tensors(tensors: list[torch.Tensor], config: Any) -> Any:
    """A ``DynamicCache`` holding ``[k0, v0, k1, v1, ...]`` (as :func:`cache_tensors` gives);
    ``config`` (the model's, or None) gives its layer types where transformers takes it.

    Example:
        >>> cache_from_tensors([torch.zeros(2, 1, 3, 4)] * 2, None).get_seq_length()
        3
    """
    from transformers import DynamicCache

    pairs = list(zip(tensors[0::2], tensors[1::2]))
    takes = inspect.signature(DynamicCache.__init__).parameters
    if "ddp_cache_data" not in takes:  # transformers < 4.56
        return DynamicCache.from_legacy_cache(tuple(pairs))
    return DynamicCache(ddp_cache_data=pairs, **({"config": config} if "config" in takes else {}))


# -- the layer classes (made once transformers is imported) -----------------------------------------


def _cache_of(layer_factory: Any) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = layer_factory
    return cache


@functools.cache
def _register() -> str | None:
    """Register :func:`shared_prefix_attention` (and sdpa's mask) under :data:`ATTENTION`, once."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # pragma: no cover - older transformers
        return None
    if _layer_classes() is None:  # pragma: no cover - transformers < 4.56
        return None
    AttentionInterface.register(ATTENTION, shared_prefix_attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return ATTENTION


@functools.cache
def _layer_classes() -> tuple[type, type] | None:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers < 4.56
        return None

    class ReservedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys / values are views of buffers with room for ``room`` more tokens."""

        def __init__(self, room: int = 0) -> None:
            super().__init__()
            self.room = room
            self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        @property
        def capacity(self) -> int:
            return 0 if self._buffers is None else self._buffers[0].shape[-2]

        def _length(self) -> int:  # tokens held in keys / values
            return self.keys.shape[-2] if self.is_initialized and self.keys.dim() == 4 else 0

        def _owns(self) -> bool:  # keys are still a view of the buffers (nothing replaced them)
            return (self._buffers is not None and self.keys.data_ptr() == self._buffers[0].data_ptr()
                    and self.keys.shape[0] == self._buffers[0].shape[0])

        def _adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            self._buffers = (keys, values)
            self.keys, self.values = keys[..., :length, :], values[..., :length, :]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self._length(), key_states.shape[-2]
            if not self._owns() or n + new > self.capacity:  # (re)allocate once, with room
                def grown(old: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
                    buf = like.new_empty(*like.shape[:-2], n + new + self.room, like.shape[-1])
                    if n:
                        buf[..., :n, :] = old
                    return buf

                self._buffers = (grown(self.keys, key_states), grown(self.values, value_states))
            keys, values = self._buffers
            keys[..., n:n + new, :] = key_states
            values[..., n:n + new, :] = value_states
            self._adopt(keys, values, n + new)
            return self.keys, self.values

        def _select(self, index: torch.Tensor) -> None:
            if self._owns():  # rows of the buffers (their room comes along): the next token is in place
                keys, values = self._buffers
                self._adopt(keys.index_select(0, index), values.index_select(0, index), self._length())
            elif self._length() > 0:
                self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._select(indices.to(self.device))

        def reorder_cache(self, beam_idx: torch.Tensor) -> None:
            self._select(beam_idx.to(self.device))

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._owns():
                keys, values = self._buffers
                self._adopt(*(x.repeat_interleave(repeats, dim=0) for x in (keys, values)), self._length())
            else:
                super().batch_repeat_interleave(repeats)

    class SharedPrefixLayer(ReservedLayer):
        """The prompt's keys / values once per prompt (``prompt_keys`` (R, h, P, d)); each row's
        own tokens in reserved buffers (``keys`` (B, h, t, d)); ``group`` (B,): each row's prompt."""

        def __init__(self, room: int = 0) -> None:
            super().__init__(room)
            self.prompt_keys: torch.Tensor | None = None
            self.prompt_values: torch.Tensor | None = None
            self.group: torch.Tensor | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if self.prompt_keys is None:  # the prefill: the prompt, one row per prompt
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                self.prompt_keys, self.prompt_values = key_states, value_states
                return key_states, value_states
            if self.group is None:  # decoding without a row map: one row per prompt
                self.group = self._rows()
            return super().update(key_states, value_states)

        def get_seq_length(self) -> int:
            prompt = 0 if self.prompt_keys is None else self.prompt_keys.shape[-2]
            return prompt + self._length()

        def _rows(self) -> torch.Tensor:
            return (self.group if self.group is not None
                    else torch.arange(self.prompt_keys.shape[0], device=self.device))

        def _select(self, index: torch.Tensor) -> None:
            if self.prompt_keys is not None:
                self.group = self._rows()[index]
            super()._select(index)

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.prompt_keys is not None:
                self.group = self._rows().repeat_interleave(repeats)
            if self._length() > 0:
                super().batch_repeat_interleave(repeats)

    return ReservedLayer, SharedPrefixLayer
