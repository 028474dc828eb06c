import re

import numpy as np
import pytest

from recgym.data import make_synthetic


def test_deterministic_under_seed_and_different_across_seeds():
    a, b = make_synthetic(400, 300, seed=3), make_synthetic(400, 300, seed=3)
    c = make_synthetic(400, 300, seed=4)
    np.testing.assert_array_equal(a.train.history, b.train.history)
    assert a.catalogue.titles == b.catalogue.titles
    assert not np.array_equal(a.train.target[:50], c.train.target[:50])


def test_structure_protocol_and_ranges():
    ds = make_synthetic(600, 500, seed=0)
    ds.validate()
    cat = ds.catalogue
    assert cat.sids.shape == (600, 3)
    assert len(cat.sid_to_items) == 600  # SIDs are unique on the synthetic catalogue
    assert all(t and len(t.split()) <= 20 for t in cat.titles)
    n = len(ds.train) + len(ds.valid) + len(ds.test)
    assert len(ds.train) == int(n * 0.8)
    # Sorted globally by target time, and train strictly before test.
    times = np.concatenate([ds.train.timestamp, ds.valid.timestamp, ds.test.timestamp])
    assert (np.diff(times) >= 0).all()
    assert (ds.train.history_len >= 1).all() and (ds.train.history_len <= 10).all()


def test_history_is_the_users_previous_items():
    ds = make_synthetic(300, 50, seed=1, min_length=6, max_length=6)
    ex = ds.train
    # Each user's next request extends the previous history by the previous target.
    for u in np.unique(ex.user)[:20]:
        rows = np.flatnonzero(ex.user == u)
        rows = rows[np.argsort(ex.timestamp[rows], kind="stable")]
        for prev, cur in zip(rows[:-1], rows[1:]):
            h_prev = ex.history[prev, : ex.history_len[prev]].tolist()
            h_cur = ex.history[cur, : ex.history_len[cur]].tolist()
            assert h_cur == (h_prev + [int(ex.target[prev])])[-10:]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_categories"):
        make_synthetic(num_categories=99)
    with pytest.raises(ValueError, match="min_length"):
        make_synthetic(min_length=1)


def test_max_history_is_checked_like_the_folder_readers():
    from recgym.data import load

    for bad in (0, -1, 2.5, True):
        message = r"max_history must be a positive int .*got " + re.escape(repr(bad))
        with pytest.raises(ValueError, match=message):
            make_synthetic(200, 50, max_history=bad)
    with pytest.raises(ValueError, match="max_history must be a positive int"):
        load("synthetic", num_items=200, num_users=50, max_history=0)
    assert make_synthetic(200, 50, max_history=1).train.history.shape[1] == 1
