"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), as a classic baseline.

A causal Transformer encoder over the user's item sequence; the output at position t scores every
item by a dot product with the (shared) item embeddings, and is trained at every non-padding
position to score the item that came next (o_t, the item at t + 1):

    E_t   = sqrt(d) * M[s_t] + P_t                        item + learned positional embedding
    x    <- x + Dropout(SA(LN(x)))                        causal self-attention, padding keys masked
    x    <- x + Dropout(FFN(LN(x)))                       FFN(x) = W2 ReLU(W1 x + b1) + b2
    F     = LN(x)                                         final layer norm
    r_i,t = F_t . M_i                                     relevance of item i after position t

Two losses, averaged over the T non-padding positions t of a batch (``SASRecConfig.loss``):

    "ce":  loss = -1/T sum_t log( exp(r_{o_t},t) / sum_{i=1..N} exp(r_i,t) )     softmax over the N items
    "bce": loss = -1/T sum_t [log sigmoid(r_{o_t},t) + log(1 - sigmoid(r_{j_t},t))]  j_t: a uniform negative

"bce" is the paper's; "ce" (the default) is SASRec as the field now runs it: cross-entropy over the
whole catalogue, which beats BERT4Rec and TIGER in recent tables (Klenitskiy & Vasilev, "Turning
Dross Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023). The padding row M_0 is
never a class of the softmax, nor a negative.

Sequences are right-aligned (the newest item sits at the last position) and left-padded with
id 0; item ids are shifted by +1 inside the model. It follows the classic-baseline interface:
``fit(train, num_items)`` then ``rank(examples, k)`` -> (n, k) item ids, best first.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recgym.data import Examples
from recgym.data.sequences import window_rows
from recgym.metrics import hits_from_ranked, ranking_metrics

LOSSES = ("ce", "bce")  # SASRecConfig.loss: full-softmax cross-entropy, or the paper's BCE


@dataclass
class SASRecConfig:
    """Hyper-parameters of :class:`SASRecRecommender` (defaults: the paper's, at a small size).

    Args:
        hidden: embedding and hidden size d.
        blocks: number of self-attention blocks b.
        heads: attention heads (the paper uses 1); must divide ``hidden``.
        dropout: dropout rate on embeddings, attention weights and both residual branches.
        max_len: sequence length n; None = the training examples' ``max_history``.
        activation: ``"relu"`` (the paper) or ``"gelu"`` in the point-wise feed-forward network.
        loss: ``"ce"`` (cross-entropy over all items, the default) or ``"bce"`` (the paper's binary
            cross-entropy against one uniform negative per position); see the module docstring.
        train_rows: ``"all"`` (the default): every train row is a sequence, which on a prefix split
            (LC-Rec, D3) teaches each target up to ``max_len`` times an epoch; ``"windows"``: one
            sequence per window of a user's rows (:func:`recgym.data.sequences.window_rows`), each
            target once an epoch after its own history, as the paper trains one sequence per user:
            ``max_len`` times fewer sequences an epoch (on Games 53,426 instead of 301,351).
        lr: Adam learning rate (betas 0.9, 0.98 as in the paper).
        batch_size: training sequences per step.
        epochs: maximum passes over the training rows.
        l2_emb: L2 penalty on the item embedding matrix (0 = off).
        patience: stop after this many epochs without a better valid NDCG@10 (needs ``valid``).
        eval_batch_size: requests scored at once in :meth:`SASRecRecommender.rank`.
        exclude_history: :meth:`SASRecRecommender.rank` never recommends an item of the request's
            own history, as the paper's evaluation (candidates are items the user has not
            interacted with). Needed in practice: with a shared item embedding and BCE, the raw
            top-1 is almost always the last input item itself; CE ranks history items high too
            (Games, no repeats: test HR@10 .086 without exclusion, .095 with).
        seed: seeds weight init, dropout, shuffling and negative sampling.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        num_threads: torch CPU threads while fitting and ranking (restored afterwards); None leaves
            torch's setting. 1 is often fastest for this small model, and far faster on a busy
            machine, where multi-threaded small kernels wait on each other.
        progress: show a tqdm bar over epochs.

    Example:
        >>> SASRecConfig(hidden=32, epochs=5).loss
        'ce'
    """

    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int | None = None
    activation: str = "relu"
    loss: str = "ce"
    train_rows: str = "all"
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 50
    l2_emb: float = 0.0
    patience: int = 5
    eval_batch_size: int = 1024
    exclude_history: bool = True
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.train_rows not in ("windows", "all"):
            raise ValueError(f"train_rows must be 'windows' or 'all', got {self.train_rows!r}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be positive, got {self.max_len}")
        for name in ("blocks", "batch_size", "epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention, Attention(Q, K, V) = softmax(QK^T / sqrt(d)) V.

    ``allowed[b, i, j]`` says whether query i may attend to key j (causal and not padding).
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)  # W^Q, W^K, W^V side by side
        self.out = nn.Linear(hidden, hidden)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (b, heads, n, n)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        weights = self.attn_dropout(scores.softmax(dim=-1))
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, d))


class SASRecBlock(nn.Module):
    """One block: x + Dropout(SA(LN(x))), then x + Dropout(FFN(LN(x))) (the paper's g(x) form)."""

    def __init__(self, hidden: int, heads: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU() if activation == "relu" else nn.GELU(),
            nn.Dropout(dropout), nn.Linear(hidden, hidden),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), allowed))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SASRec(nn.Module):
    """The SASRec network. Input: (B, n) shifted item ids (0 = padding), right-aligned, n <= max_len.

    Positions are counted from the right end (the newest item always gets position ``max_len - 1``),
    which for full-length windows is the paper's absolute position and lets a shorter window give
    exactly the same outputs as a left-padded one.

    Example:
        >>> net = SASRec(num_items=5, max_len=4).eval()
        >>> net(torch.tensor([[0, 0, 3, 1]])).shape, net.item_scores(torch.zeros(2, 64)).shape
        (torch.Size([1, 4, 64]), torch.Size([2, 5]))
    """

    def __init__(
        self, num_items: int, max_len: int, hidden: int = 64, blocks: int = 2, heads: int = 1,
        dropout: float = 0.2, activation: str = "relu",
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)  # M (row 0 = padding)
        self.pos_emb = nn.Embedding(max_len, hidden)  # P
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(hidden, heads, dropout, activation) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(hidden)
        # Glorot init of every matrix, as the original TensorFlow code (default N(0, 1) embeddings
        # give logits of std ~d at the start and train far slower).
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states F (B, n, d); F[:, t] depends on seq[:, :t+1] only, never on padding."""
        b, n = seq.shape
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len {self.max_len}")
        real = seq > 0
        positions = torch.arange(self.max_len - n, self.max_len, device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(positions)
        x = self.emb_dropout(x) * real[..., None]
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        # Query i sees keys j <= i that are real items. The diagonal is always allowed so that a
        # padding query (whose output is never used) has a key and its softmax no NaN.
        allowed = causal & (real[:, None, :] | torch.eye(n, dtype=torch.bool, device=seq.device))
        for block in self.blocks:
            x = block(x, allowed) * real[..., None]  # keep padding rows at zero, as the original
        return self.final_norm(x)

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """r = F M^T over the real items: (..., d) -> (..., num_items), column i = item id i."""
        return hidden @ self.item_emb.weight[1:].T


def next_item_loss(
    model: SASRec, seq: torch.Tensor, positives: torch.Tensor, loss: str = "ce",
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next-item loss of a batch, averaged over its non-padding positions (``positives > 0``).

    Args:
        model: the network.
        seq: (B, n) shifted input ids s_t, 0 = padding.
        positives: (B, n) shifted ids of the next item o_t, 0 where the input is padding.
        loss: ``"ce"``: cross-entropy of the softmax over the N real items (M_1..M_N; the padding
            row M_0 is not a class); ``"bce"``: the paper's BCE of o_t against ``negatives`` j_t.
        negatives: (B, n) shifted negative ids j_t, for ``"bce"`` only.

    Example:
        >>> net = SASRec(num_items=5, max_len=3, hidden=8)
        >>> seq, pos = torch.tensor([[0, 2, 3]]), torch.tensor([[0, 3, 1]])
        >>> ce = next_item_loss(net, seq, pos)  # mean over the 2 real positions
        >>> bce = next_item_loss(net, seq, pos, "bce", negatives=torch.tensor([[0, 5, 4]]))
        >>> ce.shape, bool(ce > 0 and bce > 0)
        (torch.Size([]), True)
    """
    hidden = model(seq)  # F: (B, n, d)
    real = positives > 0
    if loss == "ce":
        # r_{i,t} = F_t . M_i at the T real positions only (T, N): column i - 1 is item i, so
        # shifted id o_t is class o_t - 1 and the padding row is no class. One vectorized softmax.
        logits = model.item_scores(hidden[real])
        return F.cross_entropy(logits, positives[real] - 1)
    if loss == "bce":
        if negatives is None:
            raise ValueError("loss 'bce' needs negatives")
        hidden, emb = hidden[real], model.item_emb
        pos_logit = (hidden * emb(positives[real])).sum(-1)  # r_{o_t, t}
        neg_logit = (hidden * emb(negatives[real])).sum(-1)  # r_{j_t, t}
        return (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def right_aligned(
    history: np.ndarray, history_len: np.ndarray, max_len: int, target: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Shifted model inputs (n, max_len), newest item last, 0-padded on the left (vectorized).

    Keeps each history's newest ``max_len`` items. With ``target``, also returns the positives:
    at every input position the item that came next (the following history item, or the target
    at the last position), 0 where the input is padding.

    Example:
        >>> x, pos = right_aligned(np.array([[4, 5, -1], [7, -1, -1]]), np.array([2, 1]), 3, np.array([6, 8]))
        >>> x.tolist(), pos.tolist()
        ([[0, 5, 6], [0, 0, 8]], [[0, 6, 7], [0, 0, 9]])
    """
    history = np.asarray(history, dtype=np.int64)
    n, width = history.shape
    full = np.asarray(history_len, dtype=np.int64)
    kept = np.minimum(full, max_len)
    slots = np.arange(max_len)
    real = slots >= (max_len - kept)[:, None]
    src = (full - max_len)[:, None] + slots  # column of history that lands in each slot
    ext = np.concatenate([history, np.full((n, 1), -1, dtype=np.int64)], axis=1)
    rows = np.arange(n)[:, None]
    inputs = np.where(real, ext[rows, np.clip(src, 0, width)] + 1, 0)
    if target is None:
        return inputs, None
    ext[np.arange(n), full] = np.asarray(target, dtype=np.int64)  # the sequence history + target
    positives = np.where(real, ext[rows, np.clip(src + 1, 0, width)] + 1, 0)
    return inputs, positives


class SASRecRecommender:
    """SASRec behind the classic-baseline interface: ``fit`` then ``rank``.

    Each training row (history -> target) is one sequence: the input is the history, the positive
    at each position is the next item (history[1:] + target). With ``loss="ce"`` every position
    is a softmax over all items; with ``"bce"`` one negative per position is drawn uniformly from
    the other items. With ``valid``, training stops early on valid NDCG@10 and the best epoch's
    weights are kept (``best_epoch_``, ``best_valid_ndcg10_``, ``best_valid_hr10_``: its HR@10).

    ``rank(examples, k)`` returns ``(n, min(k, num_items))`` item ids: ``k`` larger than the
    catalogue is clipped, like :class:`~agents.baselines.PopularityRecommender`. A request with an
    empty history is scored from the positional embedding alone (no item information).

    Example:
        >>> from recgym.data import make_synthetic
        >>> ds = make_synthetic(num_items=300, num_users=300, seed=0)
        >>> model = SASRecRecommender(SASRecConfig(hidden=16, epochs=2, num_threads=1, progress=False))
        >>> model.fit(ds.train, ds.catalogue.num_items, valid=ds.valid).rank(ds.test, k=10).shape
        (341, 10)
    """

    def __init__(self, config: SASRecConfig | None = None, **overrides: Any) -> None:
        base = config or SASRecConfig()
        self.config = SASRecConfig(**{**asdict(base), **overrides})
        self.model_: SASRec | None = None

    def describe(self) -> dict[str, Any]:
        """Settings (and the best epoch once fitted), for results files."""
        out: dict[str, Any] = asdict(self.config)
        if hasattr(self, "best_epoch_"):
            out["best_epoch"] = self.best_epoch_
        return out

    # -- training ------------------------------------------------------------------------------

    def fit(self, train: Examples, num_items: int, valid: Examples | None = None) -> SASRecRecommender:
        """Train on ``train`` (optionally early-stopping on ``valid``); returns self."""
        # fork_rng: seeding for init and dropout must not reset the caller's global torch RNG.
        device = torch.device(self.config.device)
        devices = [device] if device.type == "cuda" else []
        with _threads(self.config.num_threads), torch.random.fork_rng(devices=devices):
            return self._fit(train, num_items, valid)

    def _fit(self, train: Examples, num_items: int, valid: Examples | None) -> SASRecRecommender:
        cfg = self.config
        if num_items < 2:
            raise ValueError(f"SASRec needs at least 2 items to sample negatives, got {num_items}")
        self.num_items_ = num_items
        self.max_len_ = cfg.max_len or train.max_history
        self._check(train, "train")
        if cfg.train_rows == "windows":  # each target once an epoch, after its own history
            train = train.subset(window_rows(train, self.max_len_))
        if valid is not None:
            self._check(valid, "valid")
        device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)  # weight init and dropout
        gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and negatives (on the CPU)
        model = SASRec(num_items, self.max_len_, cfg.hidden, cfg.blocks, cfg.heads, cfg.dropout,
                       cfg.activation).to(device)
        self.model_ = model
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))

        keep = train.history_len > 0  # a row without history has no position to learn from
        inputs, positives = right_aligned(train.history[keep], train.history_len[keep], self.max_len_,
                                          train.target[keep])
        inputs_t, positives_t = torch.from_numpy(inputs), torch.from_numpy(positives)
        rows = len(inputs_t)
        if rows == 0:
            raise ValueError("no training row has a non-empty history")

        self.log_: list[dict[str, float]] = []
        best_ndcg, best_hr, best_state, bad_epochs = -1.0, -1.0, None, 0
        self.best_epoch_ = cfg.epochs
        bar = _progress(range(1, cfg.epochs + 1), cfg.progress)
        for epoch in bar:
            start = time.perf_counter()
            model.train()
            order = torch.randperm(rows, generator=gen)
            total, count = 0.0, 0
            for lo in range(0, rows, cfg.batch_size):
                idx = order[lo:lo + cfg.batch_size]
                seq, pos = inputs_t[idx], positives_t[idx]
                neg = None
                if cfg.loss == "bce":
                    # Uniform negative j != o: draw from num_items - 1 ids and skip over the positive.
                    neg = torch.randint(1, num_items, pos.shape, generator=gen)
                    neg = (neg + (neg >= pos).long()).to(device)
                loss = self._loss(seq.to(device), pos.to(device), neg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                count += len(idx)
            entry = {"epoch": epoch, "loss": total / count, "seconds": time.perf_counter() - start}
            if valid is not None:
                scores = ranking_metrics(hits_from_ranked(self.rank(valid, 10), valid.target), ks=(10,))
                ndcg, hr = scores["NDCG@10"], scores["HR@10"]
                entry["valid_HR@10"], entry["valid_NDCG@10"] = hr, ndcg
                if ndcg > best_ndcg:
                    best_ndcg, best_hr, bad_epochs, self.best_epoch_ = ndcg, hr, 0, epoch
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_epochs += 1
            self.log_.append(entry)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k != "epoch"})
            if valid is not None and bad_epochs >= cfg.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        self.best_valid_ndcg10_ = best_ndcg if valid is not None else None
        self.best_valid_hr10_ = best_hr if valid is not None else None
        model.eval()
        return self

    def _loss(self, seq: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
        """:func:`next_item_loss` with the configured loss, plus the optional L2 on M."""
        loss = next_item_loss(self.model_, seq, pos, self.config.loss, negatives=neg)
        if self.config.l2_emb > 0:
            loss = loss + self.config.l2_emb * self.model_.item_emb.weight.square().sum()
        return loss

    # -- inference -----------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, examples: Examples) -> torch.Tensor:
        """Raw scores r (n, num_items) of every item for every request, from the last position.

        History items are not masked here (see ``exclude_history``). Holds the whole matrix in
        memory (n * num_items floats); :meth:`rank` works in batches.
        """
        with _threads(self.config.num_threads):
            parts = [s.cpu() for s, _ in self._score_batches(examples)]
        return torch.cat(parts) if parts else torch.zeros(0, self._fitted().item_emb.num_embeddings - 1)

    @torch.no_grad()
    def rank(self, examples: Examples, k: int) -> np.ndarray:
        """The ``min(k, num_items)`` best items per request, best first: (n, min(k, num_items)).

        With ``exclude_history`` the request's history items get score -inf, so they come last
        (only when k exceeds the number of other items).
        """
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        width = min(k, self._fitted().item_emb.num_embeddings - 1)
        parts = []
        with _threads(self.config.num_threads):
            for scores, seq in self._score_batches(examples):
                if self.config.exclude_history:
                    rows, cols = torch.nonzero(seq, as_tuple=True)
                    scores[rows, seq[rows, cols] - 1] = float("-inf")
                parts.append(torch.topk(scores, width, dim=1).indices.cpu())
        if not parts:
            return np.zeros((0, width), dtype=np.int64)
        return torch.cat(parts).numpy().astype(np.int64)

    def _score_batches(self, examples: Examples) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(scores (b, num_items), shifted input ids (b, max_len)) per batch of requests."""
        model = self._fitted()
        self._check(examples, "examples")
        model.eval()
        inputs, _ = right_aligned(examples.history, examples.history_len, self.max_len_)
        device = next(model.parameters()).device
        step = self.config.eval_batch_size
        for lo in range(0, len(inputs), step):
            seq = torch.from_numpy(inputs[lo:lo + step]).to(device)
            yield model.item_scores(model(seq)[:, -1]), seq

    def _fitted(self) -> SASRec:
        if self.model_ is None:
            raise RuntimeError("SASRecRecommender is not fitted: call fit(train, num_items) first")
        return self.model_

    def _check(self, examples: Examples, name: str) -> None:
        real = np.arange(examples.max_history) < examples.history_len[:, None]
        h = examples.history[real]
        if h.size and (h.min() < 0 or h.max() >= self.num_items_):
            raise ValueError(f"{name}: history item ids must lie in 0..{self.num_items_ - 1}")
        t = examples.target
        if name != "examples" and t.size and (t.min() < 0 or t.max() >= self.num_items_):
            raise ValueError(f"{name}: target ids must lie in 0..{self.num_items_ - 1}")


def _progress(epochs: range, enabled: bool):
    if not enabled:
        return epochs
    from tqdm.auto import tqdm

    return tqdm(epochs, desc="SASRec", unit="epoch")


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (no-op for None)."""
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
