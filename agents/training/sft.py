"""Supervised fine-tuning: next-item prediction on the train split, loss on response tokens only.

The loss is the negative log-likelihood of the target item's tokens,

    L = - (1 / sum_i |y_i|) * sum_i sum_t log pi(y_i,t | x_i, y_i,<t)

token-averaged over the batch, with pi the policy's objective: by default the full-vocabulary
softmax (cross-entropy over the whole vocabulary, as D3 / BIGRec / ReRe / MiniOneRec), the same
distribution RL then trains; ``LLMPolicy(objective="constrained")`` renormalises over the tokens the
prefix tree allows instead. Validation HR@K (constrained beam search) drives early
stopping; checkpoints are atomic and training resumes exactly where it stopped.

Two levels (``SFTConfig.level``) compute the same loss on different batches:

* ``request``: a batch is rows of the split, one ``[prompt; target item]`` forward per row (any
  template, any model).
* ``sequence``: under a compact template (items back to back, :mod:`recgym.prompts`) the prompt of
  a history followed by the target's tokens *is* the prompt of the next request, so a user's
  rows are one token stream. A batch is windows of users' sequences
  (:class:`recgym.data.UserSequences`), one causal forward each, and every target item in a window
  is scored from the items before it, as SASRec and HSTU train: i in the sum above runs over every
  (window, target) pair, x_i is the window's items before target i. Each target is learned once per
  epoch, with at most ``max_history`` items before it, as in its request; the stream holds only the
  split's own rows, so no valid or test target enters it. A user with 20 interactions costs one
  forward of about 100 tokens instead of 19 forwards of up to 100 each.
* ``auto`` (the default): ``sequence`` when the template is compact and the rows are user
  sequences, else ``request``.

Unlikelihood (``SFTConfig.unlikelihood`` = alpha > 0; Welleck et al., 2020, "Neural Text Generation
with Unlikelihood Training", its token-level objective with the previous context as candidates).
On one token per item (``sid_index="atomic"``) and the sequence level, each target's step also
pushes down the items its history already holds:

    L = L_NLL + alpha * (1 / sum_i |y_i|) * sum_i sum_{c in C_i} -log(1 - pi(c | x_i))

C_i is the set of distinct items of target i's history (the items before it in its window), minus
the target itself; pi(c | x_i) is the probability of c's token where the target's first token is
written, from the same distribution. On datasets where a user's next item is never one already in
the history (Amazon reviews: a product is reviewed once), a plain NLL still leaves history items high
(their embeddings are close to the context's), and the test's top 10 holds about one of them;
unlikelihood asks the model to learn from the train split that they do not come next, where a
decoding rule would prune them without learning. Measured on Games (README, Results), it moves
them little: the penalty's gradient is pi(c) / (1 - pi(c)), small for items that hold a few percent.

Under ``torchrun`` (data parallelism, :mod:`agents.parallel.distributed`) each step's batch is the global
batch of one process: every rank takes a contiguous shard of its rows, divides its token sum by the
global token count and the ranks' gradients are summed, so N ranks take the step one process takes
on the same batch. Rank 0 alone writes the run folder; every rank validates (a sharded collective).
``SFTConfig(fsdp=True)`` (``--fsdp``) also shards the decoder blocks' weights, gradients and AdamW
states over the ranks (:mod:`agents.parallel.fsdp`); the steps, files and metrics are the same.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.configs import SFT_LEVELS as LEVELS
from agents.configs import SFTConfig
from agents.model.policy import LLMPolicy
from agents.parallel import distributed as dist
from agents.parallel import fsdp
from agents.training.checkpoint import load_weights, restore_training, save_training
from agents.training.loop import (
    check_training_inputs,
    hidden_dropout,
    make_optimizer,
    shard_for_training,
    validate,
)
from agents.training.runs import (
    check_finite,
    check_finite_weights,
    open_run_on_main,
    run_fingerprint,
    saved_note,
)
from agents.training.tracking import MetricLogger
from recgym.data import SequenceWindows, UserSequences
from recgym.envs.task import RecGenTask


def train_sft(
    policy: LLMPolicy,
    train_task: RecGenTask,
    valid_task: RecGenTask | None = None,
    config: SFTConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    restart: bool = False,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``policy`` on ``train_task``'s requests; returns a summary with the best validation.

    With ``run_dir``, metrics go to ``metrics.jsonl`` (and TensorBoard), the latest state to
    ``checkpoint/`` (resumed from when present) and the best weights to ``best/``; at the end the
    policy holds the best weights. ``fingerprint.json`` records what determines the result
    (config, data, starting weights, plus ``run_info`` from the caller): a folder holding a run
    with another fingerprint is refused unless ``restart``, which starts over there
    (:mod:`agents.training.runs`); the folder is locked while the run uses it. A non-finite loss or
    gradient norm stops training with a :class:`~agents.training.runs.DivergedError` before anything
    non-finite is saved.

    Under ``torchrun`` every rank calls it with the same arguments (module docstring): rank 0 locks
    and writes ``run_dir``, the others read its checkpoint when resuming.

    Example:
        >>> # summary = train_sft(policy, RecGenTask(ds, split="train", tokenizer=policy.items),
        >>> #                     RecGenTask(ds, split="valid", tokenizer=policy.items), SFTConfig(epochs=1))
    """
    cfg = config or SFTConfig()
    check_training_inputs(policy, train_task, valid_task, cfg)
    if run_dir is None:
        return _train_sft(policy, train_task, valid_task, cfg, None, False)
    run = Path(run_dir)
    fingerprint = run_fingerprint("sft", cfg, train_task, valid_task, policy=policy, extra=run_info)
    with open_run_on_main(run, fingerprint, restart=restart) as resuming:
        return _train_sft(policy, train_task, valid_task, cfg, run, resuming)


def _train_sft(
    policy: LLMPolicy, train_task: RecGenTask, valid_task: RecGenTask | None, cfg: SFTConfig,
    run: Path | None, resuming: bool,
) -> dict[str, Any]:
    objective = sft_objective(policy, train_task, cfg.level, cfg.unlikelihood)
    n = objective.size
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    torch.manual_seed(cfg.seed)
    main = dist.is_main()
    dist.broadcast_parameters(policy.model)  # every rank starts from rank 0's weights (as DDP does)
    # FSDP (--fsdp under torchrun): the checkpoint's weights are loaded, then the blocks sharded.
    sharding = shard_for_training(policy, cfg.fsdp, run / "checkpoint" if resuming else None)
    params = policy.trainable_parameters()  # all of them unless adapters freeze a part
    optimizer, scheduler = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup_steps, total)
    state = {"step": 0, "best": -1.0, "best_step": 0, "bad_evals": 0, "history": []}
    restored = (restore_training(run / "checkpoint", policy, optimizer, scheduler, weights=sharding is None)
                if resuming else None)
    state = restored or state
    saved_step = state["step"] if restored is not None else None
    if restored is not None and cfg.progress and main:
        print(f"resuming {run} from step {state['step']} (--restart starts over)", file=sys.stderr)
    logger = (MetricLogger(run, from_step=state["step"] + 1 if restored else 0)
              if run is not None and main else None)
    start_time = time.time()
    bar = tqdm(total=total, initial=state["step"], desc="sft", disable=not cfg.progress or not main)
    # A run that ended (all steps, or early-stopped: its last validation ran out of patience) is
    # not trained further when the same command runs again: it returns its best weights.
    stop = state["step"] >= total or (cfg.patience > 0 and state["bad_evals"] >= cfg.patience)
    policy.model.train()
    try:
        while not stop:
            epoch, offset = divmod(state["step"], steps_per_epoch)
            order = np.random.default_rng(cfg.seed + epoch).permutation(n)  # reproducible on resume
            for b in range(offset, steps_per_epoch):
                rows = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]  # the global batch
                saved = saved_note(run, saved_step)
                mine = rows[dist.shard_slice(len(rows))]
                with dist.loss_sync(), hidden_dropout(policy.model, cfg.dropout):  # this rank's share
                    if sharding is not None and len(mine) == 0:  # FSDP: the blocks' collectives still run
                        loss, tokens = objective.zero_loss(rows[:1])
                    else:
                        loss, tokens = objective.loss(mine)
                loss_value = dist.all_sum(loss.item())  # the global loss (the same number on every rank)
                tokens = int(dist.all_sum(tokens))
                check_finite(loss_value, "loss", state["step"] + 1, cfg.lr, saved)
                optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:  # False only on a rank whose shard is empty
                    loss.backward()
                dist.sum_gradients(params)  # the global loss's gradient on every rank
                grad_norm = dist.clip_grad_norm(params, cfg.grad_clip)  # its global norm, also under FSDP
                check_finite(float(grad_norm), "gradient norm", state["step"] + 1, cfg.lr, saved)
                optimizer.step()
                scheduler.step()
                state["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}")
                if logger is not None:
                    logger.log({"loss": loss_value, "grad_norm": float(grad_norm),
                                "lr": scheduler.get_last_lr()[0], "tokens": tokens}, state["step"])
                last = state["step"] >= total
                if valid_task is not None and (state["step"] % eval_every == 0 or last):
                    stop = validate(policy, valid_task, cfg, state, logger, run, saved) or last
                if run is not None and (state["step"] % eval_every == 0 or last):
                    check_finite_weights(policy.model, "checkpoint/", state["step"], cfg.lr, saved)
                    full = fsdp.full_state_dict(policy.model)  # FSDP: gathered for rank 0 (else None)
                    moments = fsdp.full_optimizer_state(optimizer)
                    with dist.on_main("saving checkpoint/") as writing:
                        if writing:
                            save_training(run / "checkpoint", policy, optimizer, scheduler, state,
                                          asdict(cfg), model_state=full, optimizer_state=moments)
                    saved_step = state["step"]
                if stop or last:
                    stop = True
                    break
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if sharding is not None:
        sharding.restore()  # an ordinary model again, with the trained weights, on every rank
    if run is not None and (run / "best").exists():
        load_weights(policy, run / "best")
    policy.model.eval()
    return {"steps": state["step"], "best_valid": state["best"], "best_step": state["best_step"],
            "metric": cfg.metric, "seconds": round(time.time() - start_time, 2), "level": objective.level,
            "batches_per_epoch": steps_per_epoch, "valid_history": state["history"]}


class SFTObjective:
    """What one SFT step computes on a batch of ``rows`` in ``0..size-1``: requests or sequence windows.

    Example:
        >>> # objective = sft_objective(policy, train_task, "auto"); loss, tokens = objective.loss(rows)
    """

    level = "request"

    def __init__(self, policy: LLMPolicy, task: RecGenTask) -> None:
        self.policy, self.task = policy, task
        self.size = task.num_requests

    def logprobs(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Token log-probs and the mask of scored tokens for a batch."""
        responses = self.policy.item_responses(self.task.examples.target[rows])
        prompts = self.task.prompt_tokens(rows)
        logp, _, mask = self.policy.sequence_logprobs(*prompts, responses, entropy=False)
        return logp, mask

    def loss(self, rows: np.ndarray) -> tuple[torch.Tensor, int]:
        """Token-mean negative log-likelihood of the batch (global token count under torchrun)."""
        if len(rows) == 0:
            dist.global_sum(0)  # a collective within loss_sync: every rank takes part
            return torch.zeros((), device=self.policy.device), 0
        logp, mask = self.logprobs(rows)
        tokens = int(mask.sum())
        return -(logp * mask).sum() / dist.global_sum(tokens), tokens

    def zero_loss(self, rows: np.ndarray) -> tuple[torch.Tensor, int]:
        """A rank with no rows under FSDP: the forward and backward of ``rows`` (another rank's) times 0,
        so that it takes part in the blocks' all-gathers and reduce-scatters; 0 tokens."""
        logp, mask = self.logprobs(rows)
        dist.global_sum(0)  # after the forward, as loss(): the collectives in the same order on every rank
        return (logp * mask).sum() * 0.0, 0


class SequenceObjective(SFTObjective):
    """Sequence-level SFT: a batch is windows of users' item sequences, one forward each (module docstring).

    Every window is written as the compact prompt writes a history: the end token, then each item's
    token sequence (which ends with the end token); the tokens of the window's targets are scored.

    Example:
        >>> # objective = SequenceObjective(policy, train_task); objective.size  # windows per epoch
    """

    level = "sequence"

    def __init__(self, policy: LLMPolicy, task: RecGenTask, sequences: UserSequences,
                 unlikelihood: float = 0.0) -> None:
        super().__init__(policy, task)
        self.sequences = sequences
        self.unlikelihood = float(unlikelihood)
        self.windows: SequenceWindows = sequences.windows(task.max_history + 1)
        self.size = len(self.windows)
        items = policy.items.sequences
        self.item_len = np.fromiter((len(x) for x in items), np.int64, count=len(items))
        self.item_start = np.concatenate([[0], np.cumsum(self.item_len)[:-1]])
        self.item_tokens = np.concatenate(items)
        # The tree state each item token is written from (the same for every occurrence of the item).
        responses = policy.item_responses(np.arange(len(items)))
        states = policy.tree.path_states(responses)
        self.item_states = states[responses >= 0]
        self.item_first_token = responses[:, 0]  # what unlikelihood scores an item by
        if self.unlikelihood > 0 and len(np.unique(self.item_first_token)) < len(items):
            raise ValueError(f"unlikelihood={self.unlikelihood}: needs one token per item, a first token "
                             "that names the item (sid_index='atomic', --set sid_index=atomic); here "
                             "items share first tokens")

    def stream(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(token ids (B, T), lengths (B,), states (B, T))`` of windows ``rows``: -1 states on
        tokens that are not scored (the leading end token, context items, padding).

        Example:
            >>> # ids, lengths, states = objective.stream(np.arange(4))
        """
        ids, lengths, states, _ = self._stream(rows, candidates=False)
        return ids, lengths, states

    def _stream(self, rows: np.ndarray, candidates: bool,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`stream`, plus the unlikelihood candidates (B, T, max_history) when ``candidates``."""
        w = self.windows
        count = w.length[rows]
        # (window, item) pairs in stream order, as flat arrays: no loop over windows or items.
        pair_window = np.repeat(np.arange(len(rows)), count)
        pair_pos = np.arange(len(pair_window)) - np.repeat(np.cumsum(count) - count, count)
        item = self.sequences.items[w.start[rows][pair_window] + pair_pos]
        scored = pair_pos >= w.first_target[rows][pair_window]
        length = self.item_len[item]
        row_tokens = np.bincount(pair_window, weights=length, minlength=len(rows)).astype(np.int64) + 1
        pair_end = np.cumsum(length)
        row_first_pair = np.cumsum(count) - count
        # Column of each pair's first token: 1 (after the end token) + the tokens of earlier pairs of its row.
        col0 = 1 + pair_end - length - (pair_end - length)[row_first_pair][pair_window]
        tok_pair = np.repeat(np.arange(len(item)), length)
        k = np.arange(len(tok_pair)) - np.repeat(pair_end - length, length)
        src = self.item_start[item][tok_pair] + k
        row, col = pair_window[tok_pair], col0[tok_pair] + k
        eos = self.policy.items.eos_token_id
        ids = np.full((len(rows), int(row_tokens.max())), eos, np.int64)
        states = np.full(ids.shape, -1, np.int64)
        ids[row, col] = self.item_tokens[src]
        states[row, col] = np.where(scored[tok_pair], self.item_states[src], -1)
        if not candidates:
            return ids, row_tokens, states, None
        return ids, row_tokens, states, self._history_candidates(rows, ids.shape, item, pair_window,
                                                                 pair_pos, scored, col0)

    def _history_candidates(self, rows: np.ndarray, shape: tuple[int, ...], item: np.ndarray,
                            pair_window: np.ndarray, pair_pos: np.ndarray, scored: np.ndarray,
                            col0: np.ndarray) -> np.ndarray:
        """C_i of every scored target i as first tokens, (B, T, max_history), -1 where none: the
        distinct items before the target in its window, minus the target itself (module docstring)."""
        w = self.windows
        c = self.task.max_history
        target = np.flatnonzero(scored)  # pairs that are targets
        j = np.arange(c)
        before = j[None, :] < pair_pos[target, None]  # window positions 0 .. p - 1
        at = np.minimum(w.start[rows][pair_window[target], None] + j, len(self.sequences.items) - 1)
        hist = np.where(before, self.sequences.items[at], -1)
        hist[hist == item[target, None]] = -1  # never the target itself
        hist.sort(axis=1)
        hist[:, 1:][hist[:, 1:] == hist[:, :-1]] = -1  # each distinct item once
        out = np.full((*shape, c), -1, np.int64)
        out[pair_window[target], col0[target]] = np.where(hist >= 0, self.item_first_token[hist.clip(min=0)],
                                                          -1)
        return out

    def logprobs(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy.stream_logprobs(*self.stream(rows))

    def loss(self, rows: np.ndarray) -> tuple[torch.Tensor, int]:
        """Token-mean NLL plus alpha times the token-mean unlikelihood of history items (module docstring)."""
        if self.unlikelihood == 0 or len(rows) == 0:
            return super().loss(rows)
        *stream, candidates = self._stream(rows, candidates=True)
        logp, mask, cand_logp = self.policy.stream_candidate_logprobs(*stream, candidates)
        tokens = int(mask.sum())
        n = dist.global_sum(tokens)
        present = torch.as_tensor(candidates >= 0, device=cand_logp.device)
        # -log(1 - pi(c)), with 1 - pi clamped away from 0 (pi(c) -> 1 would be an infinite penalty)
        penalty = -torch.log((1 - cand_logp.exp()).clamp(min=1e-5)) * present
        return (-(logp * mask).sum() + self.unlikelihood * penalty.sum()) / n, tokens


def sft_objective(policy: LLMPolicy, task: RecGenTask, level: str = "auto",
                  unlikelihood: float = 0.0) -> SFTObjective:
    """The objective of SFT at ``level`` (``auto``, ``request`` or ``sequence``) on ``task``'s rows.

    ``sequence`` needs a compact template (else the prompt of a history plus its target is not the
    next request's prompt) and rows that are user sequences; ``auto`` takes it when both hold.
    ``unlikelihood`` (alpha > 0, module docstring) needs the sequence level and one token per item.

    Example:
        >>> # sft_objective(policy, train_task, "sequence").size  # windows of users' sequences
    """
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: choose one of {LEVELS}")
    objective = _sft_objective(policy, task, level, unlikelihood)
    if unlikelihood > 0 and not isinstance(objective, SequenceObjective):
        raise ValueError(f"unlikelihood={unlikelihood}: needs sequence-level SFT (a compact template, "
                         f"--set template=compact, and a split of user sequences); this is level "
                         f"{objective.level!r}")
    return objective


def _sft_objective(policy: LLMPolicy, task: RecGenTask, level: str, unlikelihood: float) -> SFTObjective:
    compact = policy.items.template.compact
    if level == "request" or (level == "auto" and not compact):
        return SFTObjective(policy, task)
    if not compact:
        raise ValueError("level='sequence' needs a compact template (items back to back): build the task "
                         "with template='compact' (--set template=compact), or use level='request'")
    try:
        sequences = UserSequences.from_examples(task.examples)
    except ValueError as err:
        if level == "sequence":
            raise ValueError(f"level='sequence': the {task.split!r} split's {err}") from err
        return SFTObjective(policy, task)
    return SequenceObjective(policy, task, sequences, unlikelihood)


def sft_loss(policy: LLMPolicy, task: RecGenTask, rows: np.ndarray) -> tuple[torch.Tensor, int]:
    """Token-mean negative log-likelihood of the target items of ``rows`` under the policy's objective.

    Returns ``(loss, tokens of rows)``. Inside :func:`agents.parallel.distributed.loss_sync` the mean is over
    the global batch's tokens (every rank's ``rows``): each rank's loss is its share, and the shares sum
    to the global loss. An empty ``rows`` gives a zero loss without a graph.

    Example:
        >>> # loss, tokens = sft_loss(policy, train_task, np.arange(16))
    """
    return SFTObjective(policy, task).loss(rows)
