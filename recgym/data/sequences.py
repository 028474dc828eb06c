"""A split's requests as user sequences, and the windows a causal model trains on in one forward.

A split whose requests come from users' chronological sequences (LC-Rec leave-one-out, the D3
protocol, the synthetic data) holds, per user, rows whose histories chain: each row's history is
the previous row's history plus its target (truncated to the window). Such rows are one sequence
per user, and a causal model can learn every row's target in one forward over that sequence (as
SASRec and HSTU train), instead of re-encoding the history once per row.

:meth:`UserSequences.from_examples` recovers the sequences from the rows alone (the rows' targets
and the first row's history, nothing else), so a sequence holds exactly what the split's requests
hold: built from ``train``, no valid or test target can enter it. :meth:`UserSequences.windows`
cuts long sequences into windows of at most ``max_history + 1`` items that overlap by one item, so
every target is learned exactly once per pass and never sees more than ``max_history`` items
before it, the truncation of the requests themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recgym.data.dataset import PAD, Examples


@dataclass(frozen=True)
class SequenceWindows:
    """Windows into :attr:`UserSequences.items`: window w is ``items[start[w]:start[w] + length[w]]``,
    and its items at positions ``>= first_target[w]`` are targets (the ones before are context).

    Example:
        >>> w = SequenceWindows(np.array([0]), np.array([3]), np.array([1]))
        >>> len(w), int(w.targets.sum())
        (1, 2)
    """

    start: np.ndarray
    length: np.ndarray
    first_target: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    @property
    def targets(self) -> np.ndarray:
        """Targets per window."""
        return self.length - self.first_target


@dataclass(frozen=True)
class UserSequences:
    """One chronological item sequence per user, back to back in ``items``.

    Sequence s is ``items[offsets[s]:offsets[s + 1]]`` of user ``user[s]``; its items from position
    ``first_target[s]`` on are the targets of the split's rows (in row order), the items before are
    the first row's history.

    Example:
        >>> ex = Examples.from_lists([[5], [5, 6], [9]], [6, 7, 4], max_history=3, users=[0, 0, 1])
        >>> seqs = UserSequences.from_examples(ex)
        >>> seqs.sequence(0).tolist(), seqs.sequence(1).tolist(), seqs.first_target.tolist()
        ([5, 6, 7], [9, 4], [1, 1])
    """

    items: np.ndarray
    offsets: np.ndarray
    first_target: np.ndarray
    user: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_targets(self) -> int:
        """Targets over all sequences (the split's rows)."""
        return int((np.diff(self.offsets) - self.first_target).sum())

    def sequence(self, s: int) -> np.ndarray:
        """The items of sequence ``s``, oldest first."""
        return self.items[self.offsets[s]:self.offsets[s + 1]]

    @classmethod
    def from_examples(cls, examples: Examples) -> UserSequences:
        """The sequences behind a split's rows; a ValueError when the rows are not user sequences.

        Rows are grouped by user (in row order within a user, which is chronological in every
        reader); within a user each row's history must be the previous row's history plus its
        target, truncated to ``max_history``. Rows without a user id, or that do not chain, are an
        error naming the first such row: such a split can only be trained request by request.

        Example:
            >>> UserSequences.from_examples(Examples.from_lists([[1], [2]], [2, 3], 2, users=[0, 0]))
            ... # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: row 1 (user 0) does not continue row 0: ...
        """
        n, width = examples.history.shape
        if n == 0:
            z = np.zeros(0, np.int64)
            return cls(z.astype(np.int32), np.zeros(1, np.int64), z, z)
        if (examples.user < 0).any():
            row = int(np.flatnonzero(examples.user < 0)[0])
            raise ValueError(f"row {row} has no user id: the split's rows are not user sequences, so they "
                             "can only be trained request by request")
        order = np.argsort(examples.user, kind="stable")
        user = examples.user[order]
        history, hist_len = examples.history[order], examples.history_len[order]
        target = examples.target[order]
        first = np.ones(n, bool)
        first[1:] = user[1:] != user[:-1]
        # What the next row of the same user must hold: this row's history plus its target, the
        # oldest item dropped when the window is full.
        grown = np.full((n, width + 1), PAD, np.int32)
        grown[:, :width] = history
        grown[np.arange(n), hist_len] = target
        full = hist_len >= width
        expected = np.where(full[:, None], grown[:, 1:], grown[:, :width])
        expected_len = np.minimum(hist_len + 1, width)
        same = ~first[1:]
        bad = same & ((expected_len[:-1] != hist_len[1:]) | (expected[:-1] != history[1:]).any(axis=1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"row {int(order[i + 1])} (user {int(user[i + 1])}) does not continue row "
                             f"{int(order[i])}: its history is not that row's history plus its target, so "
                             "the rows are not one sequence; train request by request")
        # The flat sequence: the first row's history, then every row's target.
        emit = np.where(first, hist_len + 1, 1).astype(np.int64)
        end = np.cumsum(emit)
        begin = end - emit
        items = np.empty(int(end[-1]), np.int32)
        items[end - 1] = target
        cols = np.arange(width)
        in_history = first[:, None] & (cols < hist_len[:, None])
        items[(begin[:, None] + cols)[in_history]] = history[in_history]
        starts = begin[first]
        offsets = np.append(starts, len(items)).astype(np.int64)
        return cls(items, offsets, hist_len[first].astype(np.int64), user[first])

    def windows(self, max_items: int) -> SequenceWindows:
        """Cut every sequence into windows of at most ``max_items`` items that overlap by one.

        Window k of a sequence starts at item ``k (max_items - 1)``; its first item is context (the
        previous window's last target) except in a sequence's first window, whose context is the
        sequence's own ``first_target`` items. So every target is in exactly one window, with at
        most ``max_items - 1`` items before it there.

        Example:
            >>> seqs = UserSequences(np.arange(6, dtype=np.int32), np.array([0, 6]), np.array([1]),
            ...                      np.array([0]))
            >>> w = seqs.windows(3)
            >>> w.start.tolist(), w.length.tolist(), w.first_target.tolist()
            ([0, 2, 4], [3, 3, 2], [1, 1, 1])
        """
        if isinstance(max_items, bool) or not isinstance(max_items, (int, np.integer)) or max_items < 2:
            raise ValueError(f"max_items must be an int >= 2 (one context item and one target), got "
                             f"{max_items!r}")
        lengths = np.diff(self.offsets)
        if (self.first_target >= max_items).any():
            raise ValueError(f"max_items={max_items} is shorter than a sequence's leading history "
                             f"({int(self.first_target.max())} items): use at least max_history + 1")
        stride = max_items - 1
        count = np.where(lengths <= max_items, 1, 1 + -(-(lengths - max_items) // stride))
        count = np.where(lengths > self.first_target, count, 0)  # a sequence with no target has none
        seq = np.repeat(np.arange(len(lengths)), count)
        k = np.arange(len(seq)) - np.repeat(np.cumsum(count) - count, count)
        local = k * stride
        start = self.offsets[seq] + local
        length = np.minimum(max_items, lengths[seq] - local)
        first_target = np.where(k == 0, self.first_target[seq], 1)
        return SequenceWindows(start.astype(np.int64), length.astype(np.int64), first_target.astype(np.int64))


def window_rows(examples: Examples, max_len: int) -> np.ndarray:
    """Row indices whose sequences hold every row's target once: per known user, counting back from
    its latest row (longest history, then latest), every ``max_len``-th row; every row of an
    unknown user (-1).

    On a prefix split (LC-Rec, D3: each row's history is the previous row's plus its target) a row
    with h <= max_len history items is a sequence of h targets, the targets of that row and of the
    h - 1 rows before it, so these rows cover each target exactly once, each seen after the same
    history as its own row, cut to at most ``max_len`` items (fewer for the first of a window).

    Example:
        >>> ex = Examples.from_lists([[5], [5, 6], [5, 6, 7], [9]], [6, 7, 8, 4], max_history=3,
        ...                          users=[0, 0, 0, 1])
        >>> window_rows(ex, 3).tolist(), window_rows(ex, 2).tolist()
        ([2, 3], [0, 2, 3])
    """
    index = np.arange(len(examples))
    order = np.lexsort((-index, -examples.timestamp, -examples.history_len, examples.user))
    user = examples.user[order]
    first = np.r_[True, user[1:] != user[:-1]]  # each user's latest row starts its group
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    back = np.arange(len(order)) - group_start  # 0 for the latest row, 1 for the one before, ...
    keep = (back % max_len == 0) | (user < 0)
    return np.sort(order[keep])


__all__ = ["SequenceWindows", "UserSequences", "window_rows"]
