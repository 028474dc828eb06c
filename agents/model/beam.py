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


def excluded_keys(tree: Any, item_sets: Any, device: Any = None) -> torch.Tensor:
    """Sorted lookup keys ``request * num_nodes + node`` of the nodes a beam search must prune so that
    no request gets an item of its row of ``item_sets`` (``[R, H]``, -1 padded): the nodes all of
    whose items are in the row (:meth:`recgym.tree.PrefixTree.covered_nodes`).

    Example:
        >>> from recgym.tree import PrefixTree
        >>> tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
        >>> excluded_keys(tree, [[2], [0]]).tolist()  # row 0: [7], [7, 0]; row 1 (8 nodes): [5, 1], [5, 1, 0]
        [2, 5, 11, 14]
    """
    rows, nodes = tree.covered_nodes(item_sets)
    return torch.from_numpy(rows * tree.num_nodes + nodes).to(device)


def mask_excluded(
    tables: Any, num_nodes: int, keys: torch.Tensor | None, requests: torch.Tensor, states: torch.Tensor,
    tokens: torch.Tensor, values: torch.Tensor,
) -> torch.Tensor:
    """``values`` (``[N, K]``, one row per beam) set to -inf where the beam's token ``tokens[n, j]`` from
    ``states[n]`` leads to a node excluded for its request ``requests[n]`` (``keys`` from
    :func:`excluded_keys`; None or empty: unchanged). Padding tokens (-1) lead nowhere.

    Example:
        >>> from recgym.tree import PrefixTree
        >>> tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
        >>> keys = excluded_keys(tree, [[2], [0]])
        >>> root = torch.zeros(2, dtype=torch.long)
        >>> mask_excluded(tree.torch_tables(), tree.num_nodes, keys, torch.tensor([0, 1]), root,
        ...               torch.tensor([[5, 7], [5, 7]]), torch.zeros(2, 2)).tolist()
        [[0.0, -inf], [0.0, 0.0]]
    """
    if keys is None or not len(keys):
        return values
    child = tables.step(states[:, None].expand_as(tokens), tokens)  # -1 for padding
    key = requests[:, None] * num_nodes + child
    at = torch.searchsorted(keys, key).clamp_max(len(keys) - 1)
    return values.masked_fill((child >= 0) & (keys[at] == key), float("-inf"))


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
        exclude_items: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Constrained beam search: the top-``k`` distinct items (terminal nodes) per prompt.

        Scores are summed log-probs (divided by the length with ``length_normalize``; the papers use
        no length penalty). ``scoring="full"`` (the default under the full objective) scores each
        token with the full-vocabulary log-softmax, disallowed tokens masked and nothing
        renormalised, as D3 / ReRe / MiniOneRec evaluate; ``"constrained"`` renormalises over the
        allowed tokens.
        ``exclude_items`` (``[R, H]`` item ids padded with -1, e.g. each request's history) are
        never returned: every node all of whose items are excluded
        (:meth:`~recgym.tree.PrefixTree.covered_nodes`) is masked like a disallowed token, so the
        beams go to other items; a title / SID that also denotes an item not excluded stays.
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
        if exclude_items is not None:
            exclude_items = np.asarray(exclude_items)
            if exclude_items.ndim != 2 or len(exclude_items) != len(prompt_ids):
                raise ValueError(f"exclude_items must be [R={len(prompt_ids)}, H] item ids padded with -1, "
                                 f"got shape {exclude_items.shape}")
        step = batch_size or len(prompt_ids)
        parts = []
        with self._inference_merge():
            for i in range(0, len(prompt_ids), step):
                excluded = None if exclude_items is None else \
                    excluded_keys(self.tree, exclude_items[i:i + step], self.device)
                with self._decoding_cache() as cache:
                    parts.append(self._beam_batch(prompt_ids[i:i + step], prompt_len[i:i + step], width, k,
                                                  length_normalize, scoring == "full", cache, excluded))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _beam_batch(
        self, prompt_ids: np.ndarray, prompt_len: np.ndarray, w: int, k: int, normalize: bool, full: bool,
        cache: Any, excluded: torch.Tensor | None = None,
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
            states_live = states.reshape(-1)[live]
            tokens_live, logits_live = self.allowed_logits(h, states_live)
            # Excluded children are masked like disallowed tokens (the live beam's request: live // beams).
            request = torch.div(live, beams, rounding_mode="floor")
            logits_live = mask_excluded(self.tables, self.tree.num_nodes, excluded, request, states_live,
                                        tokens_live, logits_live)
            # Full scoring: log-softmax over the whole vocabulary, then the mask (no renormalising).
            norm = self.full_logsumexp(h) if full else torch.logsumexp(logits_live, dim=-1)
            width_k = tokens_live.shape[1]
            tokens = torch.full((r * beams, width_k), -1, dtype=torch.long, device=dev)
            logp = torch.full((r * beams, width_k), ninf, device=dev)
            logp_live = (logits_live - norm[:, None]).float()
            if excluded is not None and not full:  # every child excluded: -inf - -inf = NaN, no candidate
                logp_live = logp_live.nan_to_num(nan=ninf, neginf=ninf)
            tokens[live], logp[live] = tokens_live, logp_live
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


__all__ = ["BeamSearch", "excluded_keys", "mask_excluded"]
