import numpy as np
import pytest

from agents.minirec import (
    CurriculumSampler,
    curriculum,
    describe_subset,
    greedy_select,
    learnability,
    proxy_rewards,
    request_embeddings,
    select,
)


def test_learnability_prefers_moderate_difficulty():
    r_bar = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    L = learnability(r_bar)  # sigma = std(r_bar) = sqrt(0.125)
    expected = np.exp(-((r_bar - 0.5) ** 2) / (2 * 0.125))
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(L, expected)
    assert L.argmax() == 2 and L[0] == L[4] == 0.0 and L[1] == pytest.approx(L[3])
    # Never-solved requests rank below partly solved ones, whatever mu.
    assert learnability(np.array([0.0, 0.1, 0.2]), mu=0.5).tolist()[0] == 0.0
    assert learnability(np.full(4, 0.25)).tolist() == [0.0] * 4


def test_greedy_picks_by_hand():
    # Two tight clusters and an outlier; scores favour the first cluster.
    emb = np.array([[0.0, 0.0], [0.0, 0.1], [3.0, 4.0], [6.0, 8.0]])
    scores = np.array([1.0, 0.95, 0.4, 0.3])
    # Pick 0 (top score). Distances to {0}: [0, 0.1, 5, 10] / 10 -> V = [-, 0.0095, 0.2, 0.3]: pick 3.
    # Distances to {0, 3}: [0, 0.1, 5, 0] / 5 -> V = [-, 0.019, 0.4, -]: pick 2, then 1.
    assert greedy_select(emb, scores, 4).tolist() == [0, 3, 2, 1]
    assert select("minirec", 2, embeddings=emb, learn=scores, represent=np.zeros(4)).tolist() == [0, 3]
    # alpha weighs learnability against representativeness.
    represent = np.array([0.0, 0.0, 0.0, 2.0])
    assert select("minirec", 1, embeddings=emb, learn=scores, represent=represent, alpha=1.0).tolist() == [3]
    assert select("minirec", 1, embeddings=emb, learn=scores, represent=represent, alpha=5.0).tolist() == [0]


def test_selectors_sizes_determinism_and_errors():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 8))
    learn = rng.random(200)
    a = select("random", 0.1, learn=learn, seed=3)
    assert len(a) == 20 and len(set(a.tolist())) == 20
    assert np.array_equal(a, select("random", 0.1, learn=learn, seed=3))
    assert select("learnability", 5, learn=learn).tolist() == np.argsort(-learn)[:5].tolist()
    k = select("kcenter", 10, embeddings=emb, seed=1)
    assert np.array_equal(k, select("kcenter", 10, embeddings=emb, seed=1)) and len(set(k.tolist())) == 10
    # K-center spreads out: its picks are farther apart than a random subset's on average.
    def min_gap(rows):
        d = np.linalg.norm(emb[rows][:, None] - emb[rows][None], axis=-1)
        return d[~np.eye(len(rows), dtype=bool)].min()
    assert min_gap(k) > min_gap(select("random", 10, learn=learn, seed=1))
    with pytest.raises(ValueError, match="subset size"):
        select("random", 500, learn=learn)
    with pytest.raises(ValueError, match="needs embeddings"):
        select("minirec", 5, learn=learn)
    with pytest.raises(ValueError, match="unknown selection"):
        select("best", 5, learn=learn)


def test_curriculum_orders_each_group_easy_to_hard():
    selected = np.array([10, 11, 12, 13, 14])
    r_bar = np.zeros(20)
    r_bar[[10, 11, 12, 13, 14]] = [0.25, 0.75, 0.5, 0.5, 1.0]
    # Groups of 3 in pick order: [10, 11, 12] -> [11, 12, 10]; [13, 14] -> [14, 13].
    assert curriculum(selected, r_bar, group=3).tolist() == [11, 12, 10, 14, 13]
    order = curriculum(selected, r_bar, group=64)
    assert order.tolist() == [14, 11, 12, 13, 10]  # ties (12, 13) keep pick order
    sampler = CurriculumSampler(order, batch_size=2)
    assert [sampler.rows(s).tolist() for s in range(3)] == [[14, 11], [12, 13], [10, 14]]
    stats = describe_subset(selected, r_bar, np.linspace(0, 1, 20))
    assert stats["size"] == 5 and stats["solved_always"] == 0.2


def test_proxy_rewards_and_embeddings_from_a_policy(tiny_sid):
    task, policy = tiny_sid
    rows = np.arange(10)
    r_bar = proxy_rewards(policy, task, rows, rollouts=4, requests_per_batch=4, progress=False, seed=2)
    assert r_bar.shape == (10,) and ((r_bar >= 0) & (r_bar <= 1)).all()
    assert np.array_equal(r_bar, proxy_rewards(policy, task, rows, rollouts=4, requests_per_batch=4,
                                                progress=False, seed=2))
    emb = request_embeddings(policy, task, rows, batch_size=3, progress=False)
    alone = request_embeddings(policy, task, rows[4:5], batch_size=1, progress=False)
    assert emb.shape == (10, policy.model.config.hidden_size)
    np.testing.assert_allclose(emb[4], alone[0], atol=1e-5)  # left padding does not change it
