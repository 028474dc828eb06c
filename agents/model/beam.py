"""Constrained beam search of an :class:`~agents.model.policy.LLMPolicy`: the top-k distinct items per prompt.

:class:`BeamSearch` (mixed into ``LLMPolicy``) scores beams under the policy's objective by default:
``"full"`` scores each token with the full-vocabulary log-softmax, disallowed tokens masked and
nothing renormalised, no length penalty (as D3 / BIGRec / ReRe / MiniOneRec evaluate);
``"constrained"`` renormalises over the allowed tokens. Candidates' logits come from the sparse head
(:meth:`~agents.model.policy.LLMPolicy.allowed_logits`); the full vocabulary is needed only for each beam
step's normaliser (:meth:`BeamSearch.full_logsumexp`), a chunk of rows at a time. Only live beams
go through the model and hold KV cache rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.model.scoring import OBJECTIVES


class BeamSearch:
    """Constrained beam search, mixed into :class:`~agents.model.policy.LLMPolicy`: :meth:`beam_search`.

    Needs from the class it is mixed into: ``objective``, ``tree`` and ``tables`` (the prefix tree
    and its tensors), ``device``, and the methods ``left_pad``, ``_forward``, ``allowed_logits``,
    ``full_logits``, ``_decoding_cache`` (the model's side, :mod:`agents.model.policy`) and
    ``_inference_merge`` (:mod:`agents.model.trainable`).

    Example:
        >>> import numpy as np
        >>> from agents.model.policy import LLMPolicy
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
        >>> ranked, scores = policy.beam_search(*task.prompt_tokens(np.arange(3)), width=8, k=4)
        >>> ranked.shape, bool((np.diff(scores, axis=1) <= 0).all())  # best first
        ((3, 4), True)
    """

    def full_logsumexp(
        self, hidden: torch.Tensor, temperature: float = 1.0, chunk: int = 256
    ) -> torch.Tensor:
        """log sum_{b in V} exp(z_b / T) per row of ``hidden`` (N, H): the full softmax's normaliser.

        Rows go through the output layer ``chunk`` at a time, so an N x V logit matrix never exists.
        """
        out = [torch.logsumexp(self.full_logits(h) / temperature, dim=-1) for h in hidden.split(chunk)]
        return torch.cat(out) if out else hidden.new_zeros(0)

    @torch.no_grad()
    def beam_search(
        self, prompt_ids: Any, prompt_len: Any, *, width: int = 50, k: int | None = None,
        length_normalize: bool = False, batch_size: int | None = None, scoring: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Constrained beam search: the top-``k`` distinct items (terminal nodes) per prompt.

        Scores are summed log-probs (divided by the length with ``length_normalize``; the papers use
        no length penalty). ``scoring="full"`` (the default under the full objective) scores each
        token with the full-vocabulary log-softmax, disallowed tokens masked and nothing
        renormalised, as D3 / ReRe / MiniOneRec evaluate; ``"constrained"`` renormalises over the
        allowed tokens.
        Every terminal is a distinct token sequence, i.e. a distinct title / SID (which may denote
        several items: ``self.tree.items(node)``). Beams are pruned exactly: search stops once no
        unfinished beam can beat the k-th finished one (log-probs only decrease).

        Returns:
            ``(terminals [R, k], scores [R, k])`` as numpy arrays, best first; -1 / -inf where fewer
            than k items were found.

        Example:
            >>> # ranked, scores = policy.beam_search(*task.prompt_tokens(rows), width=50, k=10)
        """
        k = k or width
        if k > width:
            raise ValueError(f"k={k} needs a beam width of at least k, got width={width}")
        scoring = scoring or self.objective
        if scoring not in OBJECTIVES:
            raise ValueError(f"scoring={scoring!r}: choose one of {OBJECTIVES}")
        prompt_ids, prompt_len = np.asarray(prompt_ids), np.asarray(prompt_len)
        step = batch_size or len(prompt_ids)
        parts = []
        with self._inference_merge():
            for i in range(0, len(prompt_ids), step):
                with self._decoding_cache() as cache:
                    parts.append(self._beam_batch(prompt_ids[i:i + step], prompt_len[i:i + step], width, k,
                                                  length_normalize, scoring == "full", cache))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _beam_batch(
        self, prompt_ids: np.ndarray, prompt_len: np.ndarray, w: int, k: int, normalize: bool, full: bool,
        cache: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        r, dev, ninf = len(prompt_ids), self.device, float("-inf")
        ids, attn = self.left_pad(prompt_ids, prompt_len)
        hidden, cache = self._forward(ids, attn, cache)
        h = hidden[:, -1]  # (L, H): the live beams only, in the order of ``live`` below
        # Beams: (R, W) states and scores; start with one live beam per request at the root.
        states = torch.zeros(r, 1, dtype=torch.long, device=dev)
        scores = torch.zeros(r, 1, device=dev)
        lengths = torch.zeros(r, 1, device=dev)
        fin_states = torch.full((r, k), -1, dtype=torch.long, device=dev)
        fin_scores = torch.full((r, k), ninf, device=dev)
        beams = 1
        live = torch.arange(r, device=dev)  # flat (request * beams + beam) indices of the live beams
        for _ in range(self.tree.max_depth):
            # Only live beams go through the head and the model (and hold cache rows): a finished or
            # pruned beam costs nothing, which matters when item lengths differ (titles).
            tokens_live, logits_live = self.allowed_logits(h, states.reshape(-1)[live])
            # Full scoring: log-softmax over the whole vocabulary, then the mask (no renormalising).
            norm = self.full_logsumexp(h) if full else torch.logsumexp(logits_live, dim=-1)
            width_k = tokens_live.shape[1]
            tokens = torch.full((r * beams, width_k), -1, dtype=torch.long, device=dev)
            logp = torch.full((r * beams, width_k), ninf, device=dev)
            tokens[live], logp[live] = tokens_live, (logits_live - norm[:, None]).float()
            cand_scores = scores[..., None] + logp.reshape(r, beams, width_k)  # (R, beams, K); dead: -inf
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
            # Keep the cache rows of the live beams' parents (a live beam's parent was live) and feed
            # the live beams' tokens.
            prev_beams, beams = beams, scores.shape[1]
            row_of = torch.full((r * prev_beams,), -1, dtype=torch.long, device=dev)
            row_of[live] = torch.arange(len(live), device=dev)
            live = torch.nonzero(still.reshape(-1)).squeeze(1)
            parent_flat = (torch.arange(r, device=dev)[:, None] * prev_beams + parent).reshape(-1)
            rows = row_of[parent_flat[live]]
            cache.reorder_cache(rows)
            attn = torch.cat([attn[rows], torch.ones_like(attn[rows][:, :1])], dim=1)
            hidden, cache = self._forward(token.reshape(-1)[live, None], attn, cache)
            h = hidden[:, -1]
        return fin_states.cpu().numpy(), fin_scores.float().cpu().numpy()


__all__ = ["BeamSearch"]
