"""MiniRec (Wang et al. 2026): reward-aligned selection of training requests and a curriculum.

A proxy policy (the SFT policy after a short RL run, :func:`train_proxy`) rolls out N times per
request of the pool; r_bar is the mean reward. Then

    L_i = minmax(exp(-(r_bar_i - mu)^2 / (2 sigma^2)))    learnability (mu = 0.5, sigma = std r_bar)
    R_i = minmax((1 + cos(u_i, u_mean)) / 2)               representativeness (:func:`representativeness`)
    D_i = minmax_j(min_{s in S} 1 - cos(e_j, e_s))_i       diversity: cosine distance to the selected set S
    V_i = D_i * (alpha * L_i + R_i)                        value given S

with e_i the request's embedding (the proxy's final hidden state) and the min-max of D taken over
the whole pool (selected requests included). Selection is greedy: the first pick is the highest
alpha L + R, then the request of highest V joins S, distances are updated, and so on. The
curriculum puts the selection in index order, shuffles it with Python's ``random`` (seed 42),
cuts it into folds (64 requests each by default) and orders each fold easy -> hard (r_bar
descending); training walks the folds in that order.

Comparison selectors on the same inputs: random, learnability only (top L), and K-center (greedy
max-min Euclidean distance alone).

Against the official code (github.com/WANGLin0126/MiniRec, commit a98d819, file:line):

Follows it:
  * learnability: ``gaussian_scores`` (minirec.py:17-26): mu = 0.5 (``mu=None``: the pool mean),
    sigma = population std of r_bar, a sigma of 0 means "use the std", a zero std becomes 1e-6,
    min-max scaling, and a constant array maps to ones (not zeros: with alpha > 0 this weighs D*R
    against D*(alpha + R) the same way they do).
  * representativeness: ``compute_cosine_scores`` (minirec.py:48-59) on the Hessian-vector
    products (the second entry of the file gen_grads.py:192 saves, i.e. H g at the final hidden
    state, gen_grads.py:49-61): cos to the mean direction, (1 + cos) / 2, min-max, constant -> ones.
  * selection: ``maxmin_select`` (minirec.py:81-105): L2-normalised embeddings (norm + 1e-12),
    distance 1 - cos, nearest-selected distance updated by a running minimum, D = (d - min d) /
    (max d - min d + 1e-12) over all requests, V = D * (alpha L + R) with alpha = 1
    (minirec.py:202, 238), first pick = argmax of alpha L + R, ties to the lowest index (torch /
    numpy argmax).
  * curriculum: ``random_fold_sort_with_visual`` (minirec.py:111-137): the selection in sample-id
    order (``set()`` drops the pick order; the reward file is sorted by id), ``random.seed(42);
    random.shuffle``, ``n_folds`` folds of N // n_folds (the last takes the remainder), each sorted
    by r_bar descending with a stable sort. Their runs use n_folds = 4 / 8 / 16 for 256 / 512 /
    1024 requests (scores/sorted_*_fold_*.npy, train.py:110-117): folds of 64, which ``group=64``
    gives (n_folds = N // group); applied to their scores/selected_indices_{256,512,1024}.npy and
    train_diff/all_merged_sorted.jsonl, :func:`curriculum` reproduces their sorted files exactly.
  * the proxy's budget: the rewards (launch_gen_diff.sh:52) and gradients (launch_gen_grads.sh:46)
    come from ``checkpoint-256-...-1/checkpoint-28``, the SFT'd model after 28 RL optimizer steps
    on 256 requests, group size 4 (launch_train.sh:49), 4 requests x 4 accumulation steps x 3
    processes = 48 requests per optimizer step (launch_train.sh:16,42, train.py:36), linear warm-up
    over 32 steps (launch_train.sh:45), so the whole proxy run is in warm-up; :func:`train_proxy`
    takes the same steps, requests, group size, batch and warm-up. Its loss is not theirs (below).
  * 4 proxy rollouts per request (launch_gen_diff.sh:49).

Differs, and why:
  * the proxy's RL loss is our GRPO (:class:`agents.learners.grpo.GRPO` with its defaults but for
    the clip), not their RecPO: in short, a k3 KL (beta = 1e-3) and a per-sequence mean where
    RecPO has no KL, a token mean and an item-retrieval term. Ours, per step of 48 requests x 4
    rollouts: item rollouts sampled from the policy (temperature 1) with the env's reward;
    A_i = (r_i - mean r) / (std r + 1e-4) (unbiased std) within each group of 4; per token
    l_t = -min(rho_t A_i, clip(rho_t, 0.8, 1.28) A_i) + beta KL_t with the k3 KL to a frozen copy
    of the starting policy, beta = 1e-3; the loss is the mean over each rollout's tokens, then over
    rollouts (``loss_type="grpo"``); log pi is the policy's objective (full vocabulary by
    default); one optimizer step per batch (mu = 1, one minibatch), so rho = 1 and the clip never
    acts; AdamW, grad-norm clip 1.0. Their RecPO (trainers/RecPOTrainer.py, a98d819): a rollout is
    generated text (up to 256 new tokens, launch_train.sh:44) after which the item is retrieved by
    the user embedding's similarity to the item embeddings; rewards 0.95 NDCG@1000 + 0.05 softmax
    similarity of the target (:43-50, 161-171); A = (r - mean r) / (std r + 1e-8) (unbiased std,
    :173-179); no KL and no reference model; per mini-batch of 4 rollouts (GRecTrainer.py:200-201,
    RecPOTrainer.py:295-301) the loss is a token term, the sum over the mini-batch's tokens of
    -min(rho A, clip(rho, 0.8, 1.28) A) divided by the token count and again by the mini-batch's
    4 rows (:423-425), plus an item term, the same clipped surrogate on the in-batch softmax
    probability of the target item, for the highest-advantage rollout of each request only
    (``relabel_topk=1``, :187-193, 407-422); rho = exp(log pi - stopgrad log pi) = 1 (:369), so
    their clip never acts either. Why: our policy generates the item's tokens themselves (no
    separate text, user embedding or item loss), and the proxy reuses the RL learner that trains
    the policy.
  * the proxy's learning rate is our RL default (:class:`agents.configs.RLConfig`), not their 1e-5:
    theirs is for LoRA (r = 4, alpha = 128, train.py:171) on a 2B model, ours trains all weights
    of the policy; the schedule after warm-up is irrelevant for 28 steps.
  * the embeddings come from the same proxy; theirs come from another, longer-trained checkpoint
    (gen_user_emb_checkpoint.py:331, ``debug-v1/checkpoint-234``) that a selection cannot have
    without a full RL run. Their embedding is the model's user embedding (last hidden state); ours
    is the final hidden state at the last prompt token.
  * the update direction u_i: theirs is H g at the single user-embedding hidden state of one
    rollout (group size 1, advantage 1: launch_gen_grads.sh:43, RecPOTrainer.py:173-176) under
    their token + item-retrieval loss; ours is H g at every response position, summed, for the
    GRPO loss of the N proxy rollouts plus the real next item (our generative model has no
    separate user embedding or item loss; see the notes above :func:`hidden_directions`). The
    ``params`` variant (LESS-style projected gradients) is ours only.
  * rewards: the env's reward (e.g. hit) at the env's temperature 1.0, not their NDCG + softmax mix
    at temperature 1.5 / top-k 200 (gen_difficulty.py:56-57, 165-168).
  * arithmetic in float64 (theirs float32 on the GPU) and the min-max of L and R without their
    redundant ``+ 1e-12`` in the denominator (a relative change below 1e-12); D keeps it.
  * K-center (a baseline; not in their code) uses Euclidean distance, as Sener & Savarese's core-set.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from agents.learners.base import group_advantages
from agents.model.policy import LLMPolicy, make_rollout_env
from recgym.envs.task import RecGenTask


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array maps to ones (as the official ``gaussian_scores`` does).

    Example:
        >>> minmax(np.array([2.0, 4.0, 3.0])).tolist()
        [0.0, 1.0, 0.5]
        >>> minmax(np.array([0.3, 0.3])).tolist()
        [1.0, 1.0]
    """
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def learnability(
    mean_rewards: np.ndarray, mu: float | None = 0.5, sigma: float | None = None
) -> np.ndarray:
    """L = minmax(exp(-(r_bar - mu)^2 / (2 sigma^2))), the official ``gaussian_scores``.

    ``sigma`` None or 0 means the pool's (population) std of r_bar, and a zero std becomes 1e-6;
    ``mu`` None means the pool's mean. Requests solved every time (too easy) and never (too hard)
    score lowest; a pool where every request scores the same gets ones.

    Example:
        >>> learnability(np.array([0.0, 0.5, 1.0, 0.25]), sigma=0.25).round(3).tolist()
        [0.0, 1.0, 0.0, 0.545]
        >>> learnability(np.full(3, 0.25)).tolist()
        [1.0, 1.0, 1.0]
    """
    r = np.asarray(mean_rewards, dtype=np.float64)
    if sigma is not None and sigma < 0:
        raise ValueError(f"learnability: sigma={sigma} must be positive (or None / 0 for the pool's std)")
    if len(r) == 0:
        return r
    m = float(r.mean()) if mu is None else float(mu)
    s = float(np.std(r)) if not sigma else float(sigma)
    s = s if s > 0 else 1e-6
    return minmax(np.exp(-((r - m) ** 2) / (2 * s**2)))


@dataclass
class ProxyRollouts:
    """What a proxy policy did on a pool: ``rewards`` (n, N) and ``responses`` (n, N, T) int32, -1 padded.

    Example:
        >>> p = ProxyRollouts(np.array([[1.0, 0.0], [0.0, 0.0]]), np.zeros((2, 2, 3), np.int32))
        >>> p.mean_rewards.tolist()
        [0.5, 0.0]
    """

    rewards: np.ndarray
    responses: np.ndarray

    @property
    def mean_rewards(self) -> np.ndarray:
        """r_bar per request."""
        return self.rewards.mean(axis=1)


@torch.no_grad()
def proxy_rollouts(
    policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, *, rollouts: int = 4, requests_per_batch: int = 64,
    temperature: float = 1.0, seed: int = 0, progress: bool = True,
) -> ProxyRollouts:
    """``rollouts`` constrained samples of the proxy policy per request of ``rows``, with env rewards.

    r_bar (``.mean_rewards``) feeds :func:`learnability`; the responses feed
    :func:`representativeness`. Seeded: the same call gives the same rollouts.

    Example:
        >>> # proxy = proxy_rollouts(sft_policy, train_task, np.arange(train_task.num_requests))
        >>> # L = learnability(proxy.mean_rewards)
    """
    rows = np.asarray(rows, dtype=np.int64)
    rewards = np.empty((len(rows), rollouts))
    responses = np.full((len(rows), rollouts, task.max_response_len), -1, dtype=np.int32)
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    envs = make_rollout_env(task, requests_per_batch * rollouts)
    starts = range(0, len(rows), requests_per_batch)
    for i, start in enumerate(tqdm(starts, desc="proxy rollouts", disable=not progress, leave=False)):
        batch = rows[start:start + requests_per_batch]
        if len(batch) < requests_per_batch:  # the last, smaller batch gets an env of its size
            envs = make_rollout_env(task, len(batch) * rollouts)
        rollout = policy.rollout(envs, group_size=rollouts, rows=batch, temperature=temperature,
                                 generator=generator, seed=seed + i)
        rewards[start:start + len(batch)] = rollout.rewards.reshape(-1, rollouts).cpu().numpy()
        tokens = rollout.tokens.masked_fill(~rollout.mask, -1).cpu().numpy()
        responses[start:start + len(batch), :, : tokens.shape[1]] = tokens.reshape(len(batch), rollouts, -1)
    return ProxyRollouts(rewards, responses)


@torch.no_grad()
def request_embeddings(
    policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, *, batch_size: int = 64, progress: bool = True,
) -> np.ndarray:
    """The policy's final hidden state at the last prompt token of each request: (n, hidden) float32.

    Example:
        >>> # emb = request_embeddings(sft_policy, train_task, rows)
    """
    rows = np.asarray(rows, dtype=np.int64)
    parts = []
    for start in tqdm(range(0, len(rows), batch_size), desc="embeddings", disable=not progress, leave=False):
        ids, mask = policy.left_pad(*task.prompt_tokens(rows[start:start + batch_size]))
        hidden, _ = policy._forward(ids, mask, use_cache=False)
        parts.append(hidden[:, -1].float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, policy.model.config.hidden_size), np.float32)


# -- representativeness ---------------------------------------------------------------------------
#
# Each request's RL loss is the on-policy GRPO loss (rho = 1) of a group made of its N proxy
# rollouts plus the user's real next item, which gets the hit reward (our choice: without it a
# request whose rollouts all failed has A_i = 0 for every member and no update direction at all):
#
#     l_i = -(1/G) sum_j A_j (1/|y_j|) sum_t log pi(y_jt),   A_j = (r_j - mean r) / (std r + eps)
#
# with log pi the policy's objective, the one the RL update trains: the LLM's full-vocabulary
# softmax by default (``LLMPolicy.full_vocab``), so forced tokens (one allowed child) have pi < 1
# and take part in u_i; the distribution renormalised over the tree's allowed tokens only when the
# policy's objective is "constrained".
#
# u_i is the update direction of l_i, in one of two spaces:
#   "hidden" (the authors' kind; see the module notes for how theirs differs): u_i = H_i g_i, the
#       Hessian-vector product of l_i with respect to the final hidden states h (g_i = dl_i/dh,
#       H_i = d^2 l_i/dh^2, by double backprop), summed over the group's positions; projected to
#       ``dim`` when the hidden size is larger;
#   "params" (LESS-style): u_i = P vec(dl_i/dW) for the Linear weights W of the last ``layers``
#       decoder blocks, with a Kronecker Gaussian projection P = P_out (x) P_in per layer, so the
#       per-request gradient is never materialised: P vec(sum_t d_t x_t^T) = sum_t (P_out d_t)(P_in x_t)^T.
# R_i = minmax((1 + cos(u_i, u_mean)) / 2), u_mean the mean direction over the pool.


def _gaussian(rows: int, cols: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) Gaussian random projection scaled by 1/sqrt(rows): inner products kept on average.

    On ``like``'s device, in its dtype promoted to at least float32.
    """
    dtype = torch.promote_types(like.dtype, torch.float32)
    matrix = torch.randn(rows, cols, generator=generator, dtype=torch.float64) / rows**0.5
    return matrix.to(like.device, dtype)


@dataclass
class _Groups:
    """A batch of request groups (proxy rollouts + the target) ready for teacher forcing."""

    ids: torch.Tensor  # (b, P) left-padded prompts, one per request, and their mask
    attn: torch.Tensor
    resp: torch.Tensor  # (b * G, T) responses, their tree states and mask
    states: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor  # (b * G,) A_j / |y_j| / G
    owner: torch.Tensor  # (b * G,) request of each row
    size: int  # b

    @classmethod
    def build(cls, policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, responses: np.ndarray,
              rewards: np.ndarray, eps: float = 1e-4) -> _Groups:
        b, n, _ = responses.shape
        targets = policy.item_responses(task.examples.target[rows])
        width = max(responses.shape[2], targets.shape[1])
        group = np.full((b, n + 1, width), -1, dtype=np.int64)
        group[:, :n, : responses.shape[2]] = responses
        group[:, n, : targets.shape[1]] = targets
        r = torch.as_tensor(np.concatenate([rewards, np.full((b, 1), task.hit_reward)], axis=1),
                            dtype=torch.float32, device=policy.device)
        adv = group_advantages(r.reshape(-1), n + 1, eps=eps)  # A_j
        resp, states, mask = policy._responses(group.reshape(b * (n + 1), width))
        ids, attn = policy.left_pad(*task.prompt_tokens(rows))
        weight = adv / mask.sum(dim=1).clamp(min=1) / (n + 1)
        owner = torch.arange(b, device=policy.device).repeat_interleave(n + 1)
        return cls(ids, attn, resp, states, mask, weight, owner, b)

    def hidden(self, policy: LLMPolicy, *, shared_prompt: bool = True) -> torch.Tensor:
        """Final hidden states of the response positions (b * G, T, H); h[:, t] predicts token t.

        ``shared_prompt``: each request's prompt runs once and its KV cache is expanded to the G
        rows of its group (as in :meth:`LLMPolicy.group_logprobs`): prompts are ~10-20x longer than
        responses, so this cuts the forward pass about G-fold. ``False`` runs prompt + response
        for every row in one forward (the reference the tests compare with).
        """
        t = self.resp.shape[1]
        ids, attn = self.ids, self.attn
        if not shared_prompt:
            ids, attn = ids[self.owner], attn[self.owner]
            full, _ = policy._forward(torch.cat([ids, self.resp.clamp(min=0)], dim=1),
                                      torch.cat([attn, self.mask.long()], dim=1), use_cache=False)
            return full[:, ids.shape[1] - 1: ids.shape[1] - 1 + t]
        hidden, cache = policy._forward(ids, attn)
        first = hidden[:, -1][self.owner, None]  # h_0 reads the prompt alone
        if t == 1:
            return first
        cache.reorder_cache(self.owner)
        rest, _ = policy._forward(self.resp[:, :-1].clamp(min=0),
                                  torch.cat([attn[self.owner], self.mask[:, :-1].long()], dim=1), cache)
        return torch.cat([first, rest], dim=1)

    def losses(self, policy: LLMPolicy, h: torch.Tensor) -> torch.Tensor:
        """l_i per request (b,) from the response hidden states ``h``, under the policy's objective.

        log pi is what the RL update trains (:meth:`LLMPolicy.group_logprobs` with its default
        ``full_vocab``): the whole vocabulary for ``objective="full"`` (the default), renormalised
        over the tree's allowed tokens only for ``objective="constrained"``.
        """
        logp, _, _ = policy._scatter_token_logprobs(h, self.states, self.resp, self.mask, 1.0,
                                                    policy.full_vocab, entropy=False)
        return self.per_request(-self.weight.to(logp.dtype) * logp.sum(dim=1))

    def per_request(self, rows: torch.Tensor) -> torch.Tensor:
        """Sum per-row values (b * G, ...) over each request's group: (b, ...)."""
        return rows.new_zeros((self.size, *rows.shape[1:])).index_add(0, self.owner, rows)


def hidden_directions(
    policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, responses: np.ndarray, rewards: np.ndarray,
    *, shared_prompt: bool = True,
) -> torch.Tensor:
    """u_i = H_i g_i with respect to the final hidden states, summed over positions: (b, hidden).

    Double backprop: g = dl/dh with a graph, then d(g . stopgrad(g))/dh = H g. Requests are
    independent (l_i reads only its own rows), so one pass serves the batch. h does not depend
    on how it is computed: ``shared_prompt`` (one prompt forward per request) only saves time.

    Example:
        >>> # u = hidden_directions(policy, task, rows, proxy.responses[:8], proxy.rewards[:8])
    """
    groups = _Groups.build(policy, task, rows, responses, rewards)
    with torch.no_grad():
        h0 = groups.hidden(policy, shared_prompt=shared_prompt)
    h = h0.to(torch.promote_types(h0.dtype, torch.float32)).requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(groups.losses(policy, h).sum(), h, create_graph=True)  # g = dl/dh
        (hvp,) = torch.autograd.grad((g * g.detach()).sum(), h)  # H g
    return groups.per_request(hvp.sum(dim=1))


class GradientProjector:
    """LESS-style projected per-request gradients of the last decoder blocks' Linear weights.

    Each Linear weight W (out x in) gets Gaussian matrices P_out (d_out x out) and P_in (d_in x in)
    scaled by 1/sqrt(d); the projected gradient of a request is sum_t (P_out delta_t)(P_in x_t)^T,
    computed from forward/backward hooks (x_t the layer input, delta_t the gradient at its output),
    so no per-request gradient of W is ever stored. Output: (b, layers' count * d_out * d_in).

    Example:
        >>> # proj = GradientProjector(policy, layers=1, d_out=16, d_in=16, seed=0)
        >>> # u = proj(policy, task, rows, proxy.responses[:8], proxy.rewards[:8])
    """

    def __init__(self, policy: LLMPolicy, *, layers: int = 1, d_out: int = 16, d_in: int = 16,
                 seed: int = 0) -> None:
        blocks = policy.model.model.layers
        if not 1 <= layers <= len(blocks):
            raise ValueError(f"layers={layers}: the model has {len(blocks)} decoder blocks")
        self.modules: list[tuple[str, nn.Linear]] = [
            (f"layers.{len(blocks) - layers + i}.{name}", m)
            for i, block in enumerate(blocks[len(blocks) - layers:])
            for name, m in block.named_modules() if isinstance(m, nn.Linear)
        ]
        gen = torch.Generator().manual_seed(seed)
        self.p_out: dict[str, torch.Tensor] = {}
        self.p_in: dict[str, torch.Tensor] = {}
        for name, m in self.modules:
            self.p_out[name] = _gaussian(d_out, m.out_features, gen, m.weight)
            self.p_in[name] = _gaussian(d_in, m.in_features, gen, m.weight)

    def __call__(
        self, policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, responses: np.ndarray,
        rewards: np.ndarray, *, shared_prompt: bool = True,
    ) -> torch.Tensor:
        """Projected gradients (b, layers' count * d_out * d_in); ``shared_prompt`` only saves time."""
        groups = _Groups.build(policy, task, rows, responses, rewards)
        inputs: dict[tuple[str, int], torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        handles = []

        # With a shared prompt each Linear runs twice: on the b prompts (one row per request) and
        # on the b * G responses. A request's projected gradient sums both calls' terms; the
        # prompt's delta already sums its G members' (the KV cache expansion adds them up), and
        # sum_j delta_j x^T = (sum_j delta_j) x^T, so this equals the per-row full forward.
        def capture(name: str) -> Any:
            def forward_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                p_in = self.p_in[name]
                rows = len(args[0])  # b (prompts) or b * G (responses): a call's key
                inputs[name, rows] = args[0].detach().to(p_in.dtype) @ p_in.T  # P_in x_t: (rows, L, d_in)

                def backward_hook(delta: torch.Tensor) -> None:
                    p_out = self.p_out[name]
                    a = delta.to(p_out.dtype) @ p_out.T  # P_out delta_t: (rows, L, d_out)
                    b_t = inputs.pop((name, rows))
                    per_row = torch.einsum("rld,rle->rde", a, b_t).flatten(1)  # sum_t a_t b_t^T
                    term = per_row if rows == groups.size else groups.per_request(per_row)
                    out[name] = term if name not in out else out[name] + term

                output.register_hook(backward_hook)
            return forward_hook

        trainable = {p: p.requires_grad for p in policy.parameters()}
        try:
            for p in policy.parameters():
                p.requires_grad_(False)
            for name, m in self.modules:
                m.weight.requires_grad_(True)
                handles.append(m.register_forward_hook(capture(name)))
            with torch.enable_grad():
                groups.losses(policy, groups.hidden(policy, shared_prompt=shared_prompt)).sum().backward()
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in trainable.items():
                p.requires_grad_(flag)
                p.grad = None
        return torch.cat([out[name] for name, _ in self.modules], dim=1)


def representativeness(
    policy: LLMPolicy, task: RecGenTask, rows: np.ndarray, proxy: ProxyRollouts, *, variant: str = "hidden",
    batch_size: int = 16, dim: int = 1024, layers: int = 1, seed: int = 0, progress: bool = True,
) -> np.ndarray:
    """R_i = minmax((1 + cos(u_i, u_mean)) / 2) over the pool ``rows`` (see the module notes for u_i).

    ``variant``: "hidden" (HVP with respect to the final hidden state, the authors' kind) or "params"
    (projected gradients of the last ``layers`` blocks, LESS-style). Memory is bounded: the pool's
    directions are kept as float16 unit vectors of at most ``dim`` numbers (100k requests x 1024 =
    205 MB) plus their float64 sum; one batch of ``batch_size`` requests is differentiated at a time.

    Example:
        >>> # R = representativeness(sft_policy, train_task, rows, proxy, variant="params")
    """
    rows = np.asarray(rows, dtype=np.int64)
    if variant == "hidden":
        hidden = policy.model.config.hidden_size
        gen = torch.Generator().manual_seed(seed)
        project = None if hidden <= dim else _gaussian(dim, hidden, gen, policy.head_weight).T

        def directions(*args: Any) -> torch.Tensor:
            u = hidden_directions(policy, *args)
            return u if project is None else u @ project
    elif variant == "params":
        side = max(1, int((dim / (7 * layers)) ** 0.5))  # about dim numbers over ~7 Linear layers per block
        projector = GradientProjector(policy, layers=layers, d_out=side, d_in=side, seed=seed)
        directions = partial(projector, policy)
    else:
        raise ValueError(f"unknown representativeness variant {variant!r}: choose hidden or params")
    unit: np.ndarray | None = None  # float16 unit vectors; the pool's mean comes from the float64 sum
    total: np.ndarray | None = None
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=f"representativeness ({variant})", disable=not progress, leave=False):
        sl = slice(start, start + batch_size)
        u = directions(task, rows[sl], proxy.responses[sl], proxy.rewards[sl]).double().cpu().numpy()
        if unit is None:
            unit = np.zeros((len(rows), u.shape[1]), dtype=np.float16)
            total = np.zeros(u.shape[1])
        unit[sl] = _unit_rows(u)
        total += u.sum(axis=0)
    assert unit is not None and total is not None
    return alignment(unit, total)


def _unit_rows(u: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero."""
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    return np.divide(u, norm, out=np.zeros_like(u), where=norm > 0)


def alignment(directions: np.ndarray, total: np.ndarray | None = None) -> np.ndarray:
    """R = minmax((1 + cos(u_i, u_mean)) / 2) for the rows u_i of ``directions``.

    ``total`` is the sum of the raw u_i when ``directions`` holds them already normalised (as
    :func:`representativeness` stores them); zero rows get cos = 0, and equal scores give ones (the
    official ``compute_cosine_scores``).

    Example:
        >>> alignment(np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [2.0, 0.0]])).round(3).tolist()
        [1.0, 0.971, 0.0, 1.0]
    """
    u = np.asarray(directions, dtype=np.float64)
    if total is None:
        total = u.sum(axis=0)
    mean_norm = np.linalg.norm(total)
    cos = _unit_rows(u) @ (total / mean_norm) if mean_norm > 0 else np.zeros(len(u))
    return minmax((1 + cos) / 2)


DISTANCES = ("cosine", "euclidean")


def greedy_select(
    embeddings: np.ndarray, scores: np.ndarray, k: int, *, first: int | None = None, metric: str = "cosine",
) -> np.ndarray:
    """Greedy diversity-aware selection (the official ``maxmin_select``): repeatedly pick argmax_i D_i * s_i.

    d_i is the distance from request i to its nearest selected request: ``cosine`` (MiniRec's,
    1 - cos on L2-normalised embeddings) or ``euclidean``; D = (d - min d) / (max d - min d + 1e-12)
    over the whole pool, selected requests included. The first pick is ``first`` or argmax
    ``scores``; ties go to the lower index. Returns the picks in order. Each pick is one
    vectorized pass over the pool (distances to the newest pick only).

    Example:
        >>> emb = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0]])  # 1 is near 0 in angle, far in length
        >>> greedy_select(emb, np.array([1.0, 0.9, 0.5]), 3).tolist()
        [0, 2, 1]
        >>> greedy_select(emb, np.array([1.0, 0.9, 0.5]), 3, metric="euclidean").tolist()
        [0, 1, 2]
    """
    x = np.asarray(embeddings, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"greedy_select: embeddings must be (n, dim) with n = len(scores) = {n}, "
                         f"got shape {x.shape}")
    if metric not in DISTANCES:
        raise ValueError(f"greedy_select: unknown metric {metric!r}: choose one of {DISTANCES}")
    k = min(int(k), n)
    picks = np.empty(max(k, 0), dtype=np.int64)
    if k <= 0:
        return picks
    if first is not None and not 0 <= int(first) < n:
        raise ValueError(f"greedy_select: first={first} is not a row of the {n} embeddings")
    if metric == "cosine":
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)

    def distance(i: int) -> np.ndarray:
        return 1.0 - x @ x[i] if metric == "cosine" else np.linalg.norm(x - x[i], axis=1)

    taken = np.zeros(n, dtype=bool)
    pick = int(np.argmax(s)) if first is None else int(first)
    nearest = distance(pick)
    for t in range(k):  # one pick per iteration; each one is vectorized over the pool
        picks[t] = pick
        taken[pick] = True
        if t + 1 == k:
            break
        if t > 0:
            nearest = np.minimum(nearest, distance(pick))
        low = nearest.min()
        d = (nearest - low) / (nearest.max() - low + 1e-12)
        pick = int(np.argmax(np.where(taken, -np.inf, d * s)))
    return picks


def select(
    method: str, size: int | float, *, embeddings: np.ndarray | None = None, learn: np.ndarray | None = None,
    represent: np.ndarray | None = None, alpha: float = 1.0, seed: int = 0,
) -> np.ndarray:
    """Pick ``size`` requests (a count, or a fraction of the pool when < 1) by ``method``.

    * ``minirec``: :func:`greedy_select` (cosine distance) with scores alpha * L + R (needs all
      three inputs);
    * ``learnability``: the top-L requests;
    * ``kcenter``: greedy max-min Euclidean distance on the embeddings from a seeded random start;
    * ``random``: a seeded uniform sample.

    Returns pool indices in pick order.

    Example:
        >>> select("random", 0.5, learn=np.zeros(6), seed=1).shape
        (3,)
    """
    sized = next((a for a in (learn, embeddings, represent) if a is not None), None)
    if sized is None:
        raise ValueError("select: pass learn, embeddings or represent (they give the pool size)")
    n = len(sized)
    k = int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < k <= n:
        raise ValueError(f"subset size {size!r} gives {k} requests; the pool has {n}")
    rng = np.random.default_rng(seed)
    if method == "random":
        return rng.choice(n, k, replace=False)
    if method == "learnability":
        return np.argsort(-np.asarray(learn), kind="stable")[:k]
    if method == "kcenter":
        if embeddings is None:
            raise ValueError("kcenter selection needs embeddings")
        return greedy_select(embeddings, np.ones(n), k, first=int(rng.integers(n)), metric="euclidean")
    if method == "minirec":
        if embeddings is None or learn is None or represent is None:
            raise ValueError("minirec selection needs embeddings, learnability and representativeness")
        scores = alpha * np.asarray(learn) + np.asarray(represent)
        return greedy_select(embeddings, scores, k, metric="cosine")
    raise ValueError(f"unknown selection method {method!r}: choose minirec, learnability, kcenter or random")


def curriculum(
    selected: np.ndarray, mean_rewards: np.ndarray, group: int = 64, *, seed: int = 42,
    folds: int | None = None,
) -> np.ndarray:
    """Training order by the official rule (``random_fold_sort_with_visual``): shuffled folds, easy -> hard.

    The selection is put in ascending order (the official code reads it back in sample-id order),
    shuffled by Python's ``random.Random(seed).shuffle`` (the official ``random.seed(42);
    random.shuffle``), and cut into ``folds`` folds (default ``len(selected) // group``, at least
    1) of ``len // folds`` requests, the last one taking the remainder. Each fold is ordered by
    r_bar descending (easy first); ties keep the shuffled order. ``mean_rewards`` is indexed by
    the values in ``selected``.

    Example:
        >>> r_bar = np.array([0, .1, .9, 0, 0, .2, 0, .5])
        >>> curriculum(np.array([1, 5, 7, 2]), r_bar, group=2).tolist()  # shuffled: [5, 2], [7, 1]
        [2, 5, 7, 1]
    """
    import random

    ids = np.sort(np.asarray(selected, dtype=np.int64))
    n = len(ids)
    if group < 1:
        raise ValueError(f"curriculum: group={group} must be at least 1")
    if n == 0:
        return ids
    count = max(1, n // group) if folds is None else int(folds)
    if not 1 <= count <= n:
        raise ValueError(f"curriculum: folds={folds} must be between 1 and the {n} selected requests")
    perm = list(range(n))
    random.Random(seed).shuffle(perm)  # the permutation depends on n and the seed only
    ids = ids[np.asarray(perm, dtype=np.int64)]
    size = n // count
    fold = np.minimum(np.arange(n) // size, count - 1)  # the last fold takes the remainder
    r = np.asarray(mean_rewards, dtype=np.float64)[ids]
    return ids[np.lexsort((-r, fold))]  # by fold, then r_bar descending; lexsort is stable


class CurriculumSampler:
    """A request sampler for :func:`agents.training.rl.train_rl` that walks a fixed order, batch by batch,
    starting over after the last request (each pass repeats the curriculum).

    Example:
        >>> s = CurriculumSampler(np.array([4, 2, 9]), batch_size=2)
        >>> [s.rows(step).tolist() for step in range(3)]
        [[4, 2], [9, 4], [2, 9]]
    """

    def __init__(self, order: np.ndarray, batch_size: int) -> None:
        self.order = np.asarray(order, dtype=np.int64)
        if len(self.order) == 0:
            raise ValueError("the curriculum is empty")
        self.batch_size = batch_size

    def rows(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return self.order[positions % len(self.order)]


def describe_subset(rows: np.ndarray, mean_rewards: np.ndarray | None = None,
                    learn: np.ndarray | None = None) -> dict[str, Any]:
    """Statistics of a selected subset (indices into the pool), for logs and results files.

    Example:
        >>> describe_subset(np.array([0, 2]), np.array([0.0, 1.0, 0.5]), np.array([0.0, 0.0, 1.0]))
        {'size': 2, 'reward_mean': 0.25, 'solved_never': 0.5, 'solved_always': 0.0, 'learnability_mean': 0.5}
    """
    rows = np.asarray(rows)
    out: dict[str, Any] = {"size": len(rows)}
    if mean_rewards is not None:
        r = np.asarray(mean_rewards)[rows]
        out.update(reward_mean=float(r.mean()), solved_never=float((r == 0).mean()),
                   solved_always=float((r == 1).mean()))
    if learn is not None:
        out["learnability_mean"] = float(np.asarray(learn)[rows].mean())
    return out


PROXY_STEPS = 28  # official: checkpoint-28 of an RL run on 256 requests (launch_gen_diff.sh:52)
PROXY_SAMPLES = 256


def train_proxy(
    policy: LLMPolicy, task: RecGenTask, *, steps: int = PROXY_STEPS, samples: int = PROXY_SAMPLES,
    pool: np.ndarray | None = None, requests_per_step: int = 48, group_size: int = 4, lr: float | None = None,
    warmup_steps: int = 32, seed: int = 0, progress: bool = True,
) -> LLMPolicy:
    """MiniRec's proxy: a copy of ``policy`` after a short GRPO run on a seeded sample of the pool.

    The official proxy is the SFT'd model after 28 RL optimizer steps of their RecPO on 256
    requests (group size 4, 48 requests per step, warm-up over 32 steps); this run has that
    budget but our GRPO's loss, not RecPO's (the module notes say how they differ). It copies
    ``policy`` (``copy.deepcopy``: the caller's policy does not change; memory for a second model
    is needed), draws ``samples`` rows of ``pool`` (default: every request of ``task``) with
    ``numpy.random.default_rng(seed)``, and trains the copy for ``steps`` steps through
    :func:`agents.training.rl.train_rl`, without validation, with ``GRPO`` at its defaults but for the clip:
    ``group_size`` rollouts per request at temperature 1 with the env's reward, A_i = (r_i - mean r)
    / (std r + 1e-4), ratio clip 0.2 / 0.28, a k3 KL to a frozen copy of the start with beta = 1e-3
    (so a reference model is kept too), the per-sequence mean of token losses
    (``loss_type="grpo"``), the policy's objective (full vocabulary by default). One optimizer step
    per batch (``mu=1``, one minibatch): rho = 1 and the clip never acts. ``lr`` defaults to our RL
    learning rate (``RLConfig().lr``), with ``RLConfig``'s AdamW and grad-norm clip, and a linear
    warm-up over ``warmup_steps``. ``steps=0`` returns an untrained copy.

    Example:
        >>> # proxy = train_proxy(sft_policy, train_task, pool=np.arange(train_task.num_requests))
        >>> # sel = run_selection(proxy, train_task, pool, "minirec", 1024, proxy_steps=0)
    """
    from agents.learners import make_learner
    from agents.training.rl import EpochSampler, RLConfig, train_rl

    if steps < 0:
        raise ValueError(f"train_proxy: steps={steps} must be >= 0 (0: no RL, the policy as is)")
    if samples < 1 or requests_per_step < 1:
        raise ValueError(f"train_proxy: samples={samples} and requests_per_step={requests_per_step} "
                         "must be positive")
    rows = np.arange(task.num_requests) if pool is None else np.asarray(pool, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("train_proxy: the pool is empty")
    if rows.min() < 0 or rows.max() >= task.num_requests:
        raise ValueError(f"train_proxy: pool rows must lie in [0, {task.num_requests}) "
                         f"({task.split!r} split), got [{rows.min()}, {rows.max()}]")
    proxy = copy.deepcopy(policy)
    if steps == 0:
        return proxy
    sample = np.sort(np.random.default_rng(seed).choice(rows, min(samples, len(rows)), replace=False))
    config = RLConfig(steps=steps, requests_per_step=requests_per_step,
                      lr=RLConfig().lr if lr is None else lr, warmup_steps=warmup_steps, mu=1,
                      minibatches=1, eval_every=0, seed=seed, progress=progress)
    learner = make_learner("grpo", group_size=group_size, clip_low=0.2, clip_high=0.28)
    train_rl(proxy, learner, task, None, config, None, EpochSampler(sample, requests_per_step, seed=seed))
    proxy.model.eval()
    return proxy


def check_selection_settings(
    task: RecGenTask, pool: int, size: int | float, *, rollouts: int = 4, alpha: float = 1.0,
    mu: float | None = 0.5, sigma: float | None = None, group: int = 64, proxy_steps: int = PROXY_STEPS,
) -> None:
    """Refuse, before any work, a setting of :func:`run_selection` that would give an arbitrary selection
    or fail late: NaN / inf knobs (a NaN ``mu`` or ``alpha`` makes every score NaN, and the picks
    the first of the pool), negative weights and widths, ``mu`` outside the rewards' range, counts
    below 1, a negative ``proxy_steps``, a size the pool cannot give. Errors name the argument.

    Example:
        >>> check_selection_settings(None, 10, 3, mu=float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: mu=nan: must be a finite number (None: the pool's mean r_bar)
    """
    def real(name: str, value: Any, minimum: float | None, note: str = "") -> None:
        ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
            and math.isfinite(value) and (minimum is None or value >= minimum)
        if not ok:
            bound = f" >= {minimum:g}" if minimum is not None else ""
            raise ValueError(f"{name}={value!r}: must be a finite number{bound}{note}")

    def count(name: str, value: Any, minimum: int, note: str = "") -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name}={value!r}: must be an int >= {minimum}{note}")

    real("alpha", alpha, 0.0)
    if mu is not None:
        real("mu", mu, None, " (None: the pool's mean r_bar)")
        if task is not None:
            low, high = sorted((float(task.miss_reward), float(task.hit_reward)))
            if not low <= mu <= high:
                raise ValueError(f"mu={mu!r}: outside the rewards' range [{low:g}, {high:g}] (r_bar is a "
                                 "mean reward)")
    if sigma is not None:
        real("sigma", sigma, 0.0, " (None or 0: the std of r_bar over the pool)")
    count("rollouts", rollouts, 1)
    count("group", group, 1)
    count("proxy_steps", proxy_steps, 0, " (0: the policy as is)")
    number = not isinstance(size, bool) and isinstance(size, (int, float, np.integer, np.floating))
    fraction = number and isinstance(size, (float, np.floating)) and 0 < size < 1
    if not fraction and not (number and math.isfinite(size) and size >= 1 and size == int(size)):
        raise ValueError(f"size={size!r}: must be a count >= 1 or a fraction in (0, 1)")
    if not fraction and size > pool:
        raise ValueError(f"size={size!r}: more requests than the pool's {pool}")


def run_selection(
    policy: LLMPolicy | None, task: RecGenTask, pool: np.ndarray, method: str, size: int | float, *,
    rollouts: int = 4, variant: str = "hidden", alpha: float = 1.0, mu: float | None = 0.5,
    sigma: float | None = None, group: int = 64, use_curriculum: bool | None = None, seed: int = 0,
    proxy_steps: int = PROXY_STEPS, proxy_samples: int = PROXY_SAMPLES,
    proxy_settings: dict[str, Any] | None = None, curriculum_seed: int = 42, progress: bool = True,
) -> dict[str, Any]:
    """The whole selection: a proxy from ``policy``, what ``method`` needs from it, the picks, their order.

    ``pool`` holds request rows of ``task``. Unless ``proxy_steps`` is 0 (use ``policy`` as is),
    the proxy is :func:`train_proxy` (``proxy_steps`` GRPO steps on ``proxy_samples`` requests of
    the pool; ``proxy_settings`` passes its other arguments, e.g. ``{"lr": 1e-5}``); ``policy``
    itself does not change. Only what the method uses is computed (random needs nothing, not
    even a policy; K-center the embeddings, learnability the proxy rollouts, MiniRec all three
    and R), and each part is timed. ``use_curriculum`` (default: on for MiniRec) orders the
    picks by :func:`curriculum` (folds of ``group``, shuffled with ``curriculum_seed``). Returns
    a JSON-ready dict whose ``order`` (task rows, training order) :class:`CurriculumSampler` walks;
    its ``dataset`` and ``catalogue`` (:func:`~agents.training.runs.catalogue_fingerprint`) say what the
    rows index, so that training on another catalogue refuses it (:func:`agents.build.load_subset`).

    Example:
        >>> # sel = run_selection(sft_policy, train_task, np.arange(2560), "minirec", 0.1)
        >>> # sampler = CurriculumSampler(np.array(sel["order"]), batch_size=16)
    """
    import time

    from agents.training.runs import catalogue_fingerprint

    pool = np.asarray(pool, dtype=np.int64)
    check_selection_settings(task, len(pool), size, rollouts=rollouts, alpha=alpha, mu=mu, sigma=sigma,
                             group=group, proxy_steps=proxy_steps)
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - start, 2)
        return out

    proxy = policy
    if method in ("minirec", "learnability", "kcenter"):
        if policy is None:
            raise ValueError(f"the {method!r} selector needs a proxy policy (e.g. the SFT policy)")
        if proxy_steps > 0:
            proxy = timed("proxy_training", train_proxy, policy, task, steps=proxy_steps,
                          samples=proxy_samples, pool=pool, seed=seed, progress=progress,
                          **(proxy_settings or {}))
    r_bar = learn = represent = embeddings = None
    if method in ("minirec", "learnability"):
        rollout = timed("proxy_rollouts", proxy_rollouts, proxy, task, pool, rollouts=rollouts, seed=seed,
                        progress=progress)
        r_bar = rollout.mean_rewards
        learn = learnability(r_bar, mu=mu, sigma=sigma)
        if method == "minirec":
            represent = timed("representativeness", representativeness, proxy, task, pool, rollout,
                              variant=variant, seed=seed, progress=progress)
    if method in ("minirec", "kcenter"):
        embeddings = timed("embeddings", request_embeddings, proxy, task, pool, progress=progress)
    picks = timed("select", select, method, size, embeddings=embeddings,
                  learn=learn if learn is not None else np.zeros(len(pool)), represent=represent, alpha=alpha,
                  seed=seed)
    ordered = use_curriculum if use_curriculum is not None else method == "minirec"
    if ordered:
        if r_bar is None:
            raise ValueError(f"a curriculum needs proxy rewards, which the {method!r} selector does not "
                             "compute: pass use_curriculum=False (--no-curriculum)")
        by_row = np.zeros(int(pool.max()) + 1)  # r_bar indexed by task row: folds shuffle rows in row order
        by_row[pool] = r_bar
        order = curriculum(pool[picks], by_row, group, seed=curriculum_seed)
    else:
        order = pool[picks]
    seconds["total"] = round(sum(seconds.values()), 2)
    return {"method": method, "size": size, "pool": len(pool), "selected": len(picks),
            # what the rows index: agents.build.load_subset refuses the file on another catalogue
            "dataset": task.dataset.name,
            "catalogue": catalogue_fingerprint(task.dataset.catalogue, task.representation),
            "curriculum": bool(ordered), "order": order.tolist(),
            "stats": describe_subset(picks, r_bar, learn), "seconds": seconds,
            "config": {"rollouts": rollouts, "variant": variant, "alpha": alpha, "mu": mu, "sigma": sigma,
                       "group": group, "seed": seed, "curriculum_seed": curriculum_seed,
                       "proxy_steps": proxy_steps if method != "random" else 0,
                       "proxy_samples": proxy_samples, "proxy_settings": proxy_settings or {}}}


__all__ = ["CurriculumSampler", "GradientProjector", "ProxyRollouts", "alignment", "curriculum",
           "describe_subset", "greedy_select", "hidden_directions", "learnability", "minmax",
           "proxy_rollouts", "representativeness", "request_embeddings", "run_selection", "select",
           "train_proxy"]
