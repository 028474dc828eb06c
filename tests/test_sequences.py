"""recgym.data.sequences: a split's rows as user sequences, and windows over them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recgym.data import Examples, UserSequences, make_synthetic, read_lcrec


def test_sequences_are_the_first_history_then_every_target_by_hand():
    # user 7: [1, 2] -> 3, [1, 2, 3] -> 4; user 2: [9] -> 8 (rows of users interleaved)
    ex = Examples.from_lists([[1, 2], [9], [1, 2, 3]], [3, 8, 4], max_history=3, users=[7, 2, 7])
    seqs = UserSequences.from_examples(ex)
    assert seqs.user.tolist() == [2, 7]
    assert [seqs.sequence(s).tolist() for s in range(2)] == [[9, 8], [1, 2, 3, 4]]
    assert seqs.first_target.tolist() == [1, 2]
    assert seqs.num_targets == 3


def test_a_full_window_drops_its_oldest_item():
    ex = Examples.from_lists([[1, 2], [2, 3], [3, 4]], [3, 4, 5], max_history=2, users=[0, 0, 0])
    assert UserSequences.from_examples(ex).sequence(0).tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("histories", "targets", "users", "match"), [
    ([[1], [1, 5]], [2, 3], [0, 0], r"row 1 \(user 0\) does not continue row 0"),  # history skips the target
    ([[1], [1]], [2, 3], [0, 0], "does not continue"),                             # history did not grow
    ([[1], [2]], [2, 3], [-1, -1], "row 0 has no user id"),
])
def test_rows_that_are_not_sequences_are_refused(histories, targets, users, match):
    ex = Examples.from_lists(histories, targets, max_history=3, users=users)
    with pytest.raises(ValueError, match=match):
        UserSequences.from_examples(ex)


def test_windows_by_hand():
    # one sequence of 8 items whose first 2 are history; windows of 4 items overlapping by one
    seqs = UserSequences(np.arange(10, 18, dtype=np.int32), np.array([0, 8]), np.array([2]), np.array([0]))
    w = seqs.windows(4)
    assert w.start.tolist() == [0, 3, 6]
    assert w.length.tolist() == [4, 4, 2]
    assert w.first_target.tolist() == [2, 1, 1]
    assert w.targets.sum() == seqs.num_targets == 6
    with pytest.raises(ValueError, match="max_items must be an int >= 2"):
        seqs.windows(1)
    with pytest.raises(ValueError, match="shorter than a sequence's leading history"):
        seqs.windows(2)


def test_every_target_is_in_exactly_one_window_with_at_most_max_history_before_it():
    ds = make_synthetic(num_items=300, num_users=200, max_history=4, seed=3)
    seqs = UserSequences.from_examples(ds.train)
    w = seqs.windows(5)
    taught = []
    for start, length, first in zip(w.start, w.length, w.first_target):
        items = seqs.items[start:start + length]
        for pos in range(first, length):
            assert pos <= 4  # at most max_history items before the target
            taught.append((items[:pos].tolist()[-4:], int(items[pos])))
    assert len(taught) == len(ds.train)
    targets = sorted(t for _, t in taught)
    assert targets == sorted(ds.train.target.tolist())


def _lcrec_folder(tmp_path, sequences):
    (tmp_path / "Toy.inter.json").write_text(json.dumps({str(u): s for u, s in enumerate(sequences)}))
    n = max(max(s) for s in sequences) + 1
    index = {str(i): [f"<a_{i % 7}>", f"<b_{i}>"] for i in range(n)}
    (tmp_path / "Toy.index.json").write_text(json.dumps(index))
    return tmp_path


def test_no_valid_or_test_item_enters_the_training_sequences(tmp_path):
    # Leave-one-out: the last item of each user is test, the one before valid. Items 90.. are only
    # ever valid or test targets, so none of them may appear in what training sees.
    sequences = [[0, 1, 2, 3, 90, 91], [4, 5, 6, 92, 93], [1, 3, 5, 7, 8, 94, 95], [2, 4, 96, 97]]
    ds = read_lcrec(_lcrec_folder(tmp_path, sequences), max_history=3)
    held_out = set(ds.valid.target.tolist()) | set(ds.test.target.tolist())
    assert held_out == set(range(90, 98))
    seqs = UserSequences.from_examples(ds.train)
    assert [seqs.sequence(s).tolist() for s in range(len(seqs))] == [s[:-2] for s in sequences]
    w = seqs.windows(ds.train.max_history + 1)
    trained = {int(i) for s, n in zip(w.start, w.length) for i in seqs.items[s:s + n]}
    assert not trained & held_out
    # the check itself is live: sequences built from train + valid hold the valid targets
    leaky = UserSequences.from_examples(Examples.concat([ds.train, ds.valid]))
    assert set(leaky.items.tolist()) & held_out


def test_window_rows_cover_every_target_once_after_its_own_history():
    from recgym.data.sequences import window_rows

    # user 0: rows with histories of 1..5 items (a prefix split); user 1: two rows; -1: unknown users
    hist = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5], [8], [8, 9], [3], [4]]
    targets = [2, 3, 4, 5, 6, 9, 10, 7, 7]
    ex = Examples.from_lists(hist, targets, max_history=5, users=[0, 0, 0, 0, 0, 1, 1, -1, -1])
    # by hand, windows of 2 counted back from each user's latest row: user 0 keeps rows 4 and 2 and
    # 0, user 1 row 6; unknown users keep every row
    assert window_rows(ex, 2).tolist() == [0, 2, 4, 6, 7, 8]
    assert window_rows(ex, 5).tolist() == [4, 6, 7, 8]
