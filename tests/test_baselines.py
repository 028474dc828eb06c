import numpy as np

from agents.baselines import PopularityRecommender, TransitionRecommender
from recgym.data import Examples, make_synthetic
from recgym.metrics import hits_from_ranked, ranking_metrics


def test_transition_beats_popularity_on_synthetic_by_a_clear_margin():
    ds = make_synthetic(seed=0)
    n = ds.catalogue.num_items
    scores = {}
    for model in (PopularityRecommender(), TransitionRecommender()):
        ranked = model.fit(ds.train, n).rank(ds.test, k=10)
        scores[type(model).__name__] = ranking_metrics(hits_from_ranked(ranked, ds.test.target))["HR@10"]
    assert scores["TransitionRecommender"] > 3 * scores["PopularityRecommender"] + 0.05


def test_transition_lists_are_distinct_and_filled():
    ds = make_synthetic(400, 300, seed=2)
    ranked = TransitionRecommender().fit(ds.train, 400).rank(ds.test, k=20)
    assert ranked.shape == (len(ds.test), 20) and (ranked >= 0).all()
    assert all(len(set(row)) == 20 for row in ranked.tolist())


def test_transition_counts_by_hand():
    train = Examples.from_lists([[0, 1], [0, 2], [0, 1]], [2, 1, 2], max_history=3)
    model = TransitionRecommender().fit(train, num_items=4)
    # 0 -> 1 twice, 0 -> 2 once; 1 -> 2 twice; 2 -> 1 once.
    assert model.successors_[0, :2].tolist() == [1, 2]
    query = Examples.from_lists([[3, 0], []], [0, 0], max_history=3)
    assert model.rank(query, k=3).tolist() == [[1, 2, 0], [2, 1, 0]]


def test_popularity_order_is_stable():
    train = Examples.from_lists([[0]] * 4, [3, 1, 3, 1], max_history=1)
    assert PopularityRecommender().fit(train, 4).rank(train, k=4)[0].tolist() == [1, 3, 0, 2]
    assert np.all(PopularityRecommender().fit(train, 4).counts_ == [0, 2, 0, 2])
