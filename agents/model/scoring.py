"""Teacher-forced scoring: log-probs and entropies of given responses under an LLMPolicy's objective.

:class:`TeacherForcedScoring` (mixed into :class:`~agents.model.policy.LLMPolicy`) scores token
sequences with gradients flowing, for SFT and the RL update: :meth:`~TeacherForcedScoring.sequence_logprobs`
(one forward per row), :meth:`~TeacherForcedScoring.group_logprobs` (the same numbers, one prompt
forward per request) and :meth:`~TeacherForcedScoring.stream_logprobs` (every item of a user's
sequence in one forward).

Log-probs follow the objective (:data:`OBJECTIVES`): ``"full"`` normalises over the whole
vocabulary (the output layer's full softmax), ``"constrained"`` over the allowed tokens of each
tree node (the sparse head).

Teacher forcing runs rows in **length buckets** (:func:`length_buckets`,
``LLMPolicy.bucket_padding``): title prompts and titles differ in length by 3-5x, and padding is
then not computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from agents.model.kvcache import cache_from_tensors, cache_tensors
from agents.parallel import fsdp

OBJECTIVES = ("full", "constrained")  # LLMPolicy.objective: over the whole vocabulary / the allowed tokens
BUCKET_PADDING = 0.1  # LLMPolicy.bucket_padding's default: at most 10% of a length bucket is padding


class TeacherForcedScoring:
    """Teacher-forced log-probs, mixed into :class:`~agents.model.policy.LLMPolicy`.

    Needs from the class it is mixed into: ``model``, ``tree`` and ``tables`` (the prefix tree and
    its tensors), ``device``, ``full_vocab`` (the objective), ``bucket_padding``, and the methods
    ``left_pad``, ``_forward``, ``allowed_logits`` and ``full_logits`` (:mod:`agents.model.policy`).

    Example:
        >>> import numpy as np
        >>> from agents.model.policy import LLMPolicy
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
        >>> prompts, lens = task.prompt_tokens(np.arange(2))
        >>> logp, ent, mask = policy.sequence_logprobs(prompts, lens, policy.item_responses([3, 7]))
        >>> logp.shape == mask.shape, bool((logp[mask] < 0).all())
        (True, True)
    """

    def sequence_logprobs(
        self, prompt_ids: Any, prompt_len: Any, responses: torch.Tensor | np.ndarray,
        temperature: float = 1.0, *, full_vocab: bool | None = None, entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Log-probs and entropies of given responses under the policy's objective, batched (gradients flow).

        ``responses`` (B, T) are token sequences from the root, right-padded with -1.
        One forward over ``[left-padded prompt; response]`` per row (in length buckets, see
        ``bucket_padding``): the straightforward way.
        :meth:`group_logprobs` gives the same numbers with one prompt forward per request.
        ``full_vocab`` overrides the objective (True: whole vocabulary, as TRL / ReRe train; False:
        renormalised over the allowed tokens; None: the policy's ``objective``). ``entropy=False``
        skips the entropies (None in their place): SFT needs the log-probs only, and computing them
        alone costs a log-sum-exp per position instead of a log-softmax over the allowed tokens.

        Returns:
            ``(logprobs [B, T], entropies [B, T] or None, mask [B, T])``; zeros on padding.

        Example:
            >>> # responses = policy.item_responses(items)  # (B, T), right-padded with -1
            >>> # logp, ent, mask = policy.sequence_logprobs(prompt_ids, prompt_len, responses)
        """
        full_vocab = self.full_vocab if full_vocab is None else full_vocab
        resp, states, mask = self._responses(responses)
        ids, attn = self.left_pad(prompt_ids, prompt_len)
        p, plen, rlen = ids.shape[1], attn.sum(dim=1), mask.sum(dim=1)
        # Rows run in buckets of similar length (prompt + response), each trimmed to its longest
        # prompt and response: padding is not computed.
        buckets, parts = self._buckets(plen + rlen), []
        for rows in buckets:
            pb, tb = int(plen[rows].max()), int(rlen[rows].max())
            full_ids = torch.cat([ids[rows, p - pb:], resp[rows, :tb].clamp(min=0)], dim=1)
            full_attn = torch.cat([attn[rows, p - pb:], mask[rows, :tb].long()], dim=1)
            hidden, _ = self._forward(full_ids, full_attn, use_cache=False)
            # The hidden state before token t predicts token t: positions pb-1 .. pb+tb-2.
            parts.append(hidden[:, pb - 1: pb - 1 + tb])
        h = _in_order(parts, buckets, resp.shape[1])
        return self._scatter_token_logprobs(h, states, resp, mask, temperature, full_vocab, entropy)

    def stream_logprobs(
        self, token_ids: Any, lengths: Any, states: Any, *, full_vocab: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the tokens of whole right-padded rows, each row one causal forward.

        ``token_ids`` (B, T) hold rows of ``lengths`` real tokens; ``states`` (B, T) is the prefix
        tree state *before* each token that is scored (the state the model writes it from) and -1 at
        every token that is not (context, padding, the first token). Token t is scored from the
        hidden state at t - 1. This is how a user's whole item sequence teaches every item in one
        forward (:mod:`agents.training.sft`, sequence level): items written back to back under a compact
        prompt, each scored as the response of the history before it. Rows run in length buckets.

        Returns:
            ``(logprobs [B, T], mask [B, T])``: the scored tokens' log-probs, zeros elsewhere.

        Example:
            >>> # logp, mask = policy.stream_logprobs(ids, lengths, states)
        """
        logp, mask, _ = self.stream_candidate_logprobs(token_ids, lengths, states, None,
                                                       full_vocab=full_vocab)
        return logp, mask

    def stream_candidate_logprobs(
        self, token_ids: Any, lengths: Any, states: Any, candidates: Any, *, full_vocab: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`stream_logprobs`, plus the log-probs of other ``candidates`` tokens at the same positions.

        ``candidates`` (B, T, C) are token ids, -1 where there is none; position t's candidates are
        scored in place of token t, from the same distribution (the same log-normaliser). This is
        what unlikelihood training penalises: at each target, the tokens of items the history
        already holds (:mod:`agents.training.sft`). None: no candidates (third output None).

        Returns:
            ``(logprobs [B, T], mask [B, T], candidate logprobs [B, T, C] or None)``: zeros where a
            position is not scored or a candidate is -1.

        Example:
            >>> # logp, mask, neg = policy.stream_candidate_logprobs(ids, lengths, states, candidates)
        """
        full_vocab = self.full_vocab if full_vocab is None else full_vocab
        ids = _as_long(token_ids, self.device)
        lens = _as_long(lengths, self.device)
        states = _as_long(states, self.device)
        buckets, parts = self._buckets(lens), []
        for rows in buckets:
            tb = int(lens[rows].max())
            attn = (torch.arange(tb, device=self.device) < lens[rows, None]).long()
            hidden, _ = self._forward(ids[rows, :tb], attn, use_cache=False)
            parts.append(hidden[:, :tb - 1])  # h[:, t - 1] predicts token t
        h = _in_order(parts, buckets, ids.shape[1] - 1)
        mask = states[:, 1:] >= 0
        tokens = ids[:, 1:]
        if candidates is not None:  # column 0: the token itself, then its candidates (-1: masked below)
            cand = _as_long(candidates, self.device)
            tokens = torch.cat([tokens[..., None], cand[:, 1:].clamp(min=0)], dim=-1)
        logp, _, _ = self._scatter_token_logprobs(h, states[:, 1:].clamp(min=0), tokens, mask, 1.0,
                                                  full_vocab, entropy=False)
        logp = F.pad(logp, (0, 0, 1, 0) if candidates is not None else (1, 0))  # token 0 is not scored
        mask = torch.cat([mask.new_zeros(len(mask), 1), mask], dim=1)
        if candidates is None:
            return logp, mask, None
        cand_logp = logp[..., 1:] * (cand >= 0)
        return logp[..., 0], mask, cand_logp

    def group_logprobs(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor | np.ndarray,
        prompt_index: torch.Tensor | np.ndarray, temperature: float = 1.0, *, full_vocab: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sequence_logprobs` with a **shared prompt**: one prompt forward per request.

        ``prompt_ids``/``prompt_mask`` (R, P) are left-padded prompts (as in
        :class:`~agents.model.sampling.Rollout`);
        response row b belongs to prompt ``prompt_index[b]``. Each prompt runs once, its KV cache
        is expanded to its responses by an index (gradients flow back through the expansion), and
        the first token's distribution, which depends on the prompt alone, is computed once per
        prompt. Only the responses run per row; logits are computed for allowed tokens only.
        Prompts, then responses, run in length buckets (``bucket_padding``), so padding to the
        batch's longest prompt or title is not computed.

        Example:
            >>> # logp, ent, mask = policy.group_logprobs(ro.prompt_ids, ro.prompt_mask, responses,
            >>> #                                         np.repeat(np.arange(R), n))
        """
        full_vocab = self.full_vocab if full_vocab is None else full_vocab
        resp, states, mask = self._responses(responses)
        index = _as_long(prompt_index, self.device)
        p, plen = prompt_ids.shape[1], prompt_mask.sum(dim=1)
        # Prompts run in buckets of similar length, each trimmed to its longest; their KV is
        # left-padded back to P columns (masked) and put in request order.
        buckets, last, kv = self._buckets(plen), [], []
        for rows in buckets:
            pb = int(plen[rows].max())
            hidden, cache = self._forward(prompt_ids[rows, p - pb:], prompt_mask[rows, p - pb:])
            last.append(hidden[:, -1])
            kv.append([F.pad(x, (0, 0, p - pb, 0)) for x in cache_tensors(cache)])
        h_last = _in_order(last, buckets)
        kv_all = [_in_order(list(layer), buckets) for layer in zip(*kv)]  # keys, values per layer
        # Token 0: its distribution depends on the prompt alone (every row starts at the root), so
        # it is computed once per prompt (R rows, not B) and gathered for each response.
        root = torch.zeros(len(h_last), dtype=torch.long, device=self.device)
        logp0_all, ent0 = self._token_logprobs(h_last, root, None, temperature, full_vocab)
        first = resp[:, 0].clamp(min=0)
        col0 = first if full_vocab else _column_of(self.tables.allowed_padded(root[:1])[0], first)
        logp0 = torch.where(mask[:, 0], logp0_all[index, col0], 0.0)[:, None]
        ent0 = torch.where(mask[:, 0], ent0[index], 0.0)[:, None]
        if resp.shape[1] == 1:
            return logp0, ent0, mask
        # Tokens 1..T-1, in buckets of responses of similar length: each response row gets its
        # prompt's KV by an index (gradients flow back into the shared prompt), trimmed to the
        # bucket's longest prompt; then only the responses run.
        rlen = mask.sum(dim=1)
        buckets, parts = self._buckets(rlen), []
        for rows in buckets:
            tb, pb = int(rlen[rows].max()), int(plen[index[rows]].max())
            if tb < 2:  # one-token responses: token 0 is all they have
                parts.append(h_last.new_zeros(len(rows), 0, h_last.shape[-1]))
                continue
            cache = cache_from_tensors([x[index[rows], :, p - pb:] for x in kv_all], self.model.config)
            attn = torch.cat([prompt_mask[index[rows], p - pb:], mask[rows, :tb - 1].long()], dim=1)
            h, _ = self._forward(resp[rows, :tb - 1].clamp(min=0), attn, cache)  # h[:, t-1] predicts t
            parts.append(h)
        h = _in_order(parts, buckets, resp.shape[1] - 1)
        logp, ent, _ = self._scatter_token_logprobs(
            h, states[:, 1:], resp[:, 1:], mask[:, 1:], temperature, full_vocab)
        return torch.cat([logp0, logp], dim=1), torch.cat([ent0, ent], dim=1), mask

    def _buckets(self, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Row indices in length buckets (:func:`length_buckets` with ``self.bucket_padding``).

        One padded batch while forwards are FSDP collectives: ranks would run different numbers of
        buckets, and every rank must run as many forwards as the others.
        """
        padding = None if fsdp.forwards_are_collective(self.model) else self.bucket_padding
        return [torch.as_tensor(rows, device=self.device)
                for rows in length_buckets(lengths.cpu().numpy(), padding)]

    def _responses(self, responses: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Responses as a device tensor, their tree states (-1 on padding) and mask."""
        resp = _as_long(responses, self.device)
        states = torch.as_tensor(self.tree.path_states(resp.cpu().numpy()), device=self.device)
        return resp, states, states >= 0

    def _token_logprobs(
        self, h: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor | None, temperature: float,
        full_vocab: bool = False, entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per position: log-prob of ``tokens`` (or all allowed ones when None) and the entropy
        (None where ``entropy`` is False).

        Constrained: the sparse head over the allowed tokens of ``states``; ``full_vocab``: the
        whole output layer. Given tokens without the entropy (SFT, MiniRec's scores) take
        :meth:`_chosen_logprobs`: no ``(N, K)`` log-softmax, gather or entropy is built.
        """
        if tokens is not None and not entropy:
            return self._chosen_logprobs(h, states, tokens, temperature, full_vocab), None
        if full_vocab:
            logits = self.full_logits(h)
            logp_all = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
            ent = -(logp_all.exp() * logp_all).sum(dim=1)
            return (logp_all if tokens is None else logp_all.gather(1, tokens[:, None]).squeeze(1)), ent
        allowed, logits = self.allowed_logits(h, states, temperature)
        logp_all = torch.log_softmax(logits, dim=-1)
        ent = -(logp_all.exp() * logp_all.masked_fill(~torch.isfinite(logp_all), 0)).sum(dim=1)
        if tokens is None:
            return logp_all, ent
        return logp_all.gather(1, _column_of(allowed, tokens)[:, None]).squeeze(1), ent

    def _chosen_logprobs(
        self, h: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor, temperature: float,
        full_vocab: bool,
    ) -> torch.Tensor:
        """log pi(y | s) = z_y / T - log sum_a exp(z_a / T), z = W h, the sum over the whole vocabulary
        (``full_vocab``) or the allowed tokens A(s): z_y is one dot product with the output row of y,
        and the log-sum-exp's backward is the softmax itself, so the ``(N, K)`` log-softmax, its gather
        and the gather's scatter-back are never built (on one token per item, K is the catalogue).
        ``tokens`` (N,) gives (N,); (N, C), C tokens per row scored from the same distribution, gives
        (N, C)."""
        w_y = self.head_rows(tokens)  # (N, H) or (N, C, H): the chosen tokens' output rows
        h_y = h if tokens.dim() == 1 else h[:, None]
        # in float32 at least: a half-precision product summed in half precision would lose digits
        z_y = (_at_least_float32(h_y) * _at_least_float32(w_y)).sum(dim=-1)
        if temperature != 1.0:
            z_y, h = z_y / temperature, h / temperature  # z / T = W (h / T)
        log_z = self.full_logits(h).logsumexp(dim=1) if full_vocab else self.allowed_logsumexp(h, states)
        if tokens.dim() == 2:
            log_z = log_z[:, None]
        # z_y and log Z come from two products: where y is the only allowed token (p = 1) rounding can
        # leave +1e-7, so log p is clamped at 0 (its gradient there is 0 either way)
        return (z_y - log_z).clamp(max=0.0)

    def _scatter_token_logprobs(
        self, h: torch.Tensor, states: torch.Tensor, resp: torch.Tensor, mask: torch.Tensor,
        temperature: float, full_vocab: bool, entropy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Log-probs / entropies of ``resp`` (hidden states ``h`` (B, T, H)) at ``mask``, zeros elsewhere
        (entropies None where ``entropy`` is False). ``resp`` (B, T, C) without entropies: C tokens per
        position, log-probs (B, T, C)."""
        logp_m, ent_m = self._token_logprobs(h[mask], states[mask], resp[mask], temperature, full_vocab,
                                             entropy)
        logp = torch.zeros((*mask.shape, *logp_m.shape[1:]), device=self.device, dtype=logp_m.dtype)
        logp[mask] = logp_m
        ent = None
        if ent_m is not None:
            ent = torch.zeros_like(logp)
            ent[mask] = ent_m
        return logp, ent, mask


def length_buckets(lengths: Any, max_padding: float | None) -> list[np.ndarray]:
    """Row indices grouped so that padding each group to its longest row wastes at most
    ``max_padding`` of the group's tokens: longest rows first, greedily; None is one group.

    Running a batch bucket by bucket computes (nearly) only real tokens where lengths differ
    (title prompts and titles do: 124-429 and 10-51 tokens on office-d3).

    Example:
        >>> [b.tolist() for b in length_buckets([10, 3, 9, 4], 0.25)]  # [10, 9, 4]: 7 of 30 pads
        [[0, 2, 3], [1]]
        >>> [b.tolist() for b in length_buckets([10, 3, 9, 4], None)]
        [[0, 1, 2, 3]]
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if max_padding is None:
        return [np.arange(n)]
    if not 0 <= max_padding < 1:
        raise ValueError(f"max_padding={max_padding}: a fraction in [0, 1)")
    order = np.argsort(-lengths, kind="stable")
    longest_first = lengths[order]
    total = np.concatenate([[0], np.cumsum(longest_first)])
    out, start = [], 0
    while start < n:  # one iteration per bucket
        count = np.arange(1, n - start + 1)
        real = total[start + 1:] - total[start]
        # real tokens >= (1 - max_padding) * padded tokens; true for a prefix only (lengths fall)
        fits = real >= (1 - max_padding) * count * longest_first[start]
        end = start + (n - start if fits.all() else int(np.argmin(fits)))
        out.append(np.sort(order[start:end]))  # rows in order within a bucket: one bucket is arange(n)
        start = end
    return out


def _in_order(parts: list[torch.Tensor], buckets: list[torch.Tensor], width: int | None = None,
              ) -> torch.Tensor:
    """Per-bucket outputs (rows of ``buckets[i]``) back in row order, dim 1 right-padded to ``width``."""
    if width is not None:
        parts = [F.pad(x, (0, 0, 0, width - x.shape[1])) for x in parts]
    if len(parts) == 1:  # one bucket holds every row, in order (length_buckets)
        return parts[0]
    return torch.cat(parts)[torch.argsort(torch.cat(buckets))]


def _as_long(values: Any, device: torch.device) -> torch.Tensor:
    """An int64 tensor on ``device`` from a tensor, array or list."""
    return torch.as_tensor(values if torch.is_tensor(values) else np.asarray(values), device=device).long()


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go to float32 for the softmax; float64 (gradient checks) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _column_of(allowed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Column of each token in its row of padded allowed tokens (``allowed`` (N, K), or (1, K) shared)."""
    return (allowed == tokens[:, None]).float().argmax(dim=1)


__all__ = ["BUCKET_PADDING", "OBJECTIVES", "TeacherForcedScoring", "length_buckets"]
