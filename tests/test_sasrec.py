from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.baselines import PopularityRecommender
from agents.baselines.sasrec import SASRec, SASRecConfig, SASRecRecommender, next_item_loss, right_aligned
from recgym.data import Examples, load, make_synthetic
from recgym.metrics import hits_from_ranked, ranking_metrics

# One thread: the model is small, and multi-threaded tiny kernels crawl on a busy 2-core machine.
FAST = SASRecConfig(hidden=16, epochs=2, num_threads=1, progress=False)


@pytest.fixture(scope="module")
def tiny():
    ds = make_synthetic(num_items=200, num_users=300, seed=1)
    model = SASRecRecommender(FAST).fit(ds.train, ds.catalogue.num_items)
    return ds, model


def hr10(ranked: np.ndarray, targets: np.ndarray) -> float:
    return ranking_metrics(hits_from_ranked(ranked, targets), ks=(10,))["HR@10"]


def test_ce_sasrec_beats_popularity_and_bce_on_synthetic():
    ds = load("synthetic", num_items=300, num_users=400)  # seeded; 3,613 train rows, 452 test
    n = ds.catalogue.num_items
    pop = hr10(PopularityRecommender().fit(ds.train, n).rank(ds.test, 10), ds.test.target)
    models = {}
    for loss in ("ce", "bce"):
        model = SASRecRecommender(hidden=32, epochs=10, patience=3, loss=loss, num_threads=1, progress=False)
        models[loss] = model.fit(ds.train, n, valid=ds.valid)
        assert model.log_[-1]["loss"] < model.log_[0]["loss"]
        # Early stopping keeps the epoch with the best valid NDCG@10, and reports its HR@10.
        best = max(model.log_, key=lambda e: e["valid_NDCG@10"])
        assert model.best_epoch_ == best["epoch"] and model.best_valid_ndcg10_ == best["valid_NDCG@10"]
        assert model.best_valid_hr10_ == best["valid_HR@10"]
    ce, bce = (hr10(models[loss].rank(ds.test, 10), ds.test.target) for loss in ("ce", "bce"))
    # Measured (10 epochs, seed 0): CE .44, BCE .33, popularity .14.
    assert ce > 2 * pop + 0.1, (ce, pop)
    assert bce > pop + 0.1, (bce, pop)
    assert ce > bce, (ce, bce)


def tiny_net_and_batch() -> tuple[SASRec, torch.Tensor, torch.Tensor]:
    """A small eval-mode net, and a batch whose first two rows are left-padded."""
    torch.manual_seed(0)
    net = SASRec(num_items=7, max_len=4, hidden=8, blocks=1).eval()
    with torch.no_grad():
        # The padding row M_0 never changes F (tested below); a large one makes any use of it as a
        # class or negative show in the loss.
        net.item_emb.weight[0] = 3 * torch.randn(8)
    seq = torch.tensor([[0, 0, 2, 5], [0, 3, 1, 7], [4, 6, 2, 1]])  # shifted ids, 0 = padding
    positives = torch.tensor([[0, 0, 5, 3], [0, 1, 7, 2], [6, 2, 1, 4]])  # the next item o_t
    return net, seq, positives


def test_ce_loss_is_the_softmax_over_real_items_at_real_positions():
    net, seq, positives = tiny_net_and_batch()
    with torch.no_grad():
        hidden = net(seq)
        items = net.item_emb.weight
        terms = []
        for b in range(seq.shape[0]):
            for t in range(seq.shape[1]):
                if seq[b, t] == 0:
                    continue  # a padding position has no next item
                r = torch.stack([hidden[b, t] @ items[i] for i in range(1, 8)])  # r_{i,t}, i = 1..N
                log_softmax = r - torch.log(torch.exp(r).sum())
                terms.append(-log_softmax[positives[b, t] - 1])  # entry i - 1 is item i
        expected = torch.stack(terms).mean()
    assert len(terms) == 9
    torch.testing.assert_close(next_item_loss(net, seq, positives, "ce"), expected)
    torch.testing.assert_close(next_item_loss(net, seq, positives), expected)  # "ce" is the default


def test_bce_loss_is_the_papers_positive_vs_one_negative():
    net, seq, positives = tiny_net_and_batch()
    negatives = torch.tensor([[0, 0, 1, 6], [0, 4, 4, 5], [7, 3, 3, 2]])
    with torch.no_grad():
        hidden = net(seq)
        items = net.item_emb.weight
        terms = []
        for b, t in zip(*torch.nonzero(seq, as_tuple=True)):
            r_pos = hidden[b, t] @ items[positives[b, t]]
            r_neg = hidden[b, t] @ items[negatives[b, t]]
            terms.append(-torch.log(torch.sigmoid(r_pos)) - torch.log(1 - torch.sigmoid(r_neg)))
        expected = torch.stack(terms).mean()
    torch.testing.assert_close(next_item_loss(net, seq, positives, "bce", negatives=negatives), expected)
    with pytest.raises(ValueError, match="needs negatives"):
        next_item_loss(net, seq, positives, "bce")


def test_right_aligned_inputs_and_next_item_positives():
    history = np.array([[4, 5, 6, -1], [7, -1, -1, -1], [-1, -1, -1, -1]])
    inputs, positives = right_aligned(history, np.array([3, 1, 0]), 3, np.array([9, 8, 2]))
    # Shifted by +1; newest item last; positive = the next item (history[1:] + target).
    assert inputs.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert positives.tolist() == [[6, 7, 10], [0, 0, 9], [0, 0, 0]]
    # A window shorter than the history keeps the newest items.
    inputs, positives = right_aligned(history, np.array([3, 1, 0]), 2, np.array([9, 8, 2]))
    assert inputs[0].tolist() == [6, 7] and positives[0].tolist() == [7, 10]


def test_output_at_t_ignores_later_items():
    torch.manual_seed(0)
    net = SASRec(num_items=50, max_len=8, hidden=16, blocks=2, heads=2).eval()
    seq = torch.randint(1, 51, (4, 8))
    changed = seq.clone()
    changed[:, 5:] = torch.randint(1, 51, (4, 3))
    with torch.no_grad():
        a, b = net(seq), net(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_left_padding_does_not_change_the_output():
    torch.manual_seed(0)
    net = SASRec(num_items=50, max_len=10, hidden=16, blocks=2, heads=2).eval()
    items = torch.tensor([[7, 3, 12]])
    with torch.no_grad():
        bare = net(items)[:, -1]
        for width in (5, 10):
            padded = torch.cat([torch.zeros(1, width - 3, dtype=torch.long), items], dim=1)
            torch.testing.assert_close(net(padded)[:, -1], bare)
        # What sits in the padding slots (its embedding) is never seen by real positions.
        padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), items], dim=1)
        before = net(padded)[:, -3:]
        net.item_emb.weight[0] = torch.randn(16)
        torch.testing.assert_close(net(padded)[:, -3:], before)


def test_recommender_scores_are_padding_invariant(tiny):
    ds, model = tiny
    histories = [[3, 17, 42], [5], [8, 9, 10, 11, 12, 13, 14]]
    short = Examples.from_lists(histories, [0, 0, 0], max_history=7)
    long = Examples.from_lists(histories, [0, 0, 0], max_history=10)  # more padding
    torch.testing.assert_close(model.score(short), model.score(long))
    assert np.array_equal(model.rank(short, 10), model.rank(long, 10))


def test_fit_is_deterministic_under_the_seed(tiny):
    ds, model = tiny
    again = SASRecRecommender(FAST).fit(ds.train, ds.catalogue.num_items)
    assert np.array_equal(model.rank(ds.test, 20), again.rank(ds.test, 20))
    torch.testing.assert_close(model.score(ds.test), again.score(ds.test), rtol=0, atol=0)
    other = SASRecRecommender(FAST, seed=1).fit(ds.train, ds.catalogue.num_items)
    assert not torch.equal(model.score(ds.test), other.score(ds.test))


def test_fit_leaves_the_callers_torch_rng_alone():
    ds = make_synthetic(num_items=200, num_users=100, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SASRecRecommender(FAST, epochs=1).fit(ds.train, ds.catalogue.num_items)
    torch.testing.assert_close(torch.rand(3), expected)


def test_shapes_and_history_exclusion(tiny):
    ds, model = tiny
    n = ds.catalogue.num_items
    ranked = model.rank(ds.test, 10)
    assert ranked.shape == (len(ds.test), 10) and ranked.dtype == np.int64
    assert ((ranked >= 0) & (ranked < n)).all()
    assert all(len(set(row)) == 10 for row in ranked.tolist())
    real = np.arange(ds.test.max_history) < ds.test.history_len[:, None]
    seen = (ranked[:, :, None] == np.where(real, ds.test.history, -1)[:, None, :]).any(axis=2)
    assert not seen.any()  # exclude_history=True (the default)
    scores = model.score(ds.test)
    assert scores.shape == (len(ds.test), n) and torch.isfinite(scores).all()
    # Without exclusion, rank is exactly top-k of score.
    raw = SASRecRecommender(FAST, exclude_history=False)
    raw.model_, raw.num_items_, raw.max_len_ = model.model_, model.num_items_, model.max_len_
    assert np.array_equal(raw.rank(ds.test, 5), torch.topk(scores, 5).indices.numpy())


def test_k_larger_than_the_catalogue_is_clipped(tiny):
    ds, model = tiny
    n = ds.catalogue.num_items
    ranked = model.rank(ds.test.subset(slice(0, 4)), k=n + 50)
    assert ranked.shape == (4, n)
    assert all(sorted(row) == list(range(n)) for row in ranked.tolist())
    assert model.rank(Examples.empty(10), k=5).shape == (0, 5)


def test_empty_history_gets_finite_scores(tiny):
    _, model = tiny
    empty = Examples.from_lists([[]], [0], max_history=10)
    assert torch.isfinite(model.score(empty)).all()
    assert model.rank(empty, 3).shape == (1, 3)


def test_bad_input_raises_clear_errors(tiny):
    ds, model = tiny
    with pytest.raises(ValueError, match="k must be positive"):
        model.rank(ds.test, 0)
    with pytest.raises(ValueError, match="history item ids"):
        model.rank(Examples.from_lists([[1, 999]], [0], max_history=3), 5)
    with pytest.raises(RuntimeError, match="not fitted"):
        SASRecRecommender(FAST).rank(ds.test, 5)
    with pytest.raises(ValueError, match="target ids"):
        SASRecRecommender(FAST).fit(Examples.from_lists([[0], [1]], [1, 50], max_history=2), num_items=10)
    with pytest.raises(ValueError, match="at least 2 items"):
        SASRecRecommender(FAST).fit(Examples.from_lists([[0]], [0], max_history=2), num_items=1)
    with pytest.raises(ValueError, match="must divide"):
        SASRecConfig(hidden=10, heads=3)
    with pytest.raises(ValueError, match="loss must be one of"):
        SASRecConfig(loss="softmax")
    with pytest.raises(ValueError, match="loss must be one of"):
        ones = torch.ones(1, 2, dtype=torch.long)
        next_item_loss(model.model_, ones, ones, "mse")
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.model_(torch.ones(1, model.max_len_ + 1, dtype=torch.long))


def test_train_rows_windows_trains_one_sequence_per_window(monkeypatch):
    import agents.baselines.sasrec as sasrec
    from recgym.data.sequences import window_rows

    ds = make_synthetic(num_items=200, num_users=300, seed=1)
    seen = []
    real = sasrec.right_aligned

    def spy(history, lengths, *args, **kwargs):
        seen.append(len(history))
        return real(history, lengths, *args, **kwargs)

    monkeypatch.setattr(sasrec, "right_aligned", spy)
    for rows in ("all", "windows"):
        SASRecRecommender(replace(FAST, epochs=1, train_rows=rows)).fit(ds.train, ds.catalogue.num_items)
    windows = window_rows(ds.train, ds.train.max_history)
    assert seen == [int((ds.train.history_len > 0).sum()), int((ds.train.history_len[windows] > 0).sum())]
    assert seen[1] < seen[0] / 3
    with pytest.raises(ValueError, match="train_rows"):
        SASRecConfig(train_rows="some")
