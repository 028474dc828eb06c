import numpy as np
import pytest

from recgym.metrics import KS, format_table, hits_from_ranked, ranking_metrics


def test_hand_computed_values():
    ranked = np.array([[5, 1, 2], [7, 8, 9], [3, 4, 6], [1, 2, 3]])
    targets = np.array([5, 9, 0, 2])
    m = ranking_metrics(hits_from_ranked(ranked, targets), ks=(1, 3))
    assert m["HR@1"] == pytest.approx(1 / 4)
    assert m["HR@3"] == pytest.approx(3 / 4)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(3)) / 4)


def test_first_hit_counts_once_and_short_lists():
    hits = np.array([[False, True, True]])
    m = ranking_metrics(hits, ks=KS)
    assert m["HR@20"] == 1.0 and m["NDCG@20"] == pytest.approx(1 / np.log2(3))
    assert m["HR@1"] == 0.0


def test_empty_and_bad_shapes():
    assert ranking_metrics(np.zeros((0, 5), bool))["HR@5"] == 0.0
    with pytest.raises(ValueError, match="2-D"):
        ranking_metrics(np.zeros(3, bool))


def test_table_lists_every_column():
    text = format_table({"a": {"HR@1": 0.5, "NDCG@1": 0.25}}, ks=(1, 3))
    assert "| a | 0.5000 | 0.2500 | - | - |" in text


def test_item_sets_count_a_hit_when_the_target_is_inside():
    from recgym.metrics import hits_from_item_sets

    # Request 0: ranks denote {1, 2}, {3}; request 1: ranks denote {}, {5, 9}.
    offsets = np.array([0, 2, 3, 3, 5])
    values = np.array([1, 2, 3, 5, 9])
    hits = hits_from_item_sets(offsets, values, np.array([2, 9]), (2, 2))
    assert hits.tolist() == [[True, False], [False, True]]
    m = ranking_metrics(hits, ks=(1, 2))
    assert m["HR@1"] == 0.5 and m["HR@2"] == 1.0


# -- bad input: clear errors naming the argument, never a silent wrong result (issue 15, item 10) --

@pytest.mark.parametrize(("ks", "error", "match"), [
    ((0,), ValueError, r"ks\[0\] must be >= 1, got 0"),
    ((1, 2.5), TypeError, r"ks\[1\] must be an int, got 2.5"),
    ((True,), TypeError, r"ks\[0\] must be an int, got True"),
    (5, TypeError, "ks must be a sequence of ints"),
])
def test_bad_cutoffs(ks, error, match):
    with pytest.raises(error, match=match):
        ranking_metrics(np.ones((2, 3), bool), ks=ks)


def test_hits_must_be_booleans():
    with pytest.raises(TypeError, match="hits must be booleans"):
        ranking_metrics(np.array([[0.3, 0.0]]), ks=(1,))
    with pytest.raises(ValueError, match="hits must be booleans .*got the value 2"):
        ranking_metrics(np.array([[0, 2]]), ks=(2,))
    assert ranking_metrics(np.array([[0, 1]]), ks=(2,))["HR@2"] == 1.0  # 0 / 1 integers are fine


def test_ranked_lists_and_targets_must_agree():
    with pytest.raises(ValueError, match=r"ranked must be a 2-D \(requests, ranks\) array"):
        hits_from_ranked(np.array([1, 2]), np.array([1, 2]))
    for targets in (np.array([1]), np.array([1, 2, 3]), 2):
        with pytest.raises(ValueError, match=r"targets must have shape \(2,\)"):
            hits_from_ranked(np.array([[1, 2], [3, 4]]), targets)


def test_item_sets_must_cover_every_entry():
    from recgym.metrics import hits_from_item_sets

    values = np.array([1, 2, 3, 5, 9])
    with pytest.raises(ValueError, match=r"offsets must have 2 \* 2 \+ 1 = 5 entries, got 3"):
        hits_from_item_sets(np.array([0, 2, 3]), values, np.array([2, 9]), (2, 2))
    with pytest.raises(ValueError, match=r"offsets must rise from 0 to len\(values\) = 5"):
        hits_from_item_sets(np.array([0, 2, 3, 3, 4]), values, np.array([2, 9]), (2, 2))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\)"):
        hits_from_item_sets(np.array([0, 2, 3, 3, 5]), values, np.array([2]), (2, 2))


# -- per-request gains and the paired bootstrap (issue 25: confidence intervals against SFT) ---------

def test_first_hit_ranks_and_request_gains_give_ranking_metrics():
    from recgym.metrics import first_hit_ranks, request_gains

    hits = np.array([[False, True, True], [False, False, False], [True, False, False], [0, 0, 1]], dtype=bool)
    ranks = first_hit_ranks(hits)
    assert ranks.tolist() == [1, -1, 0, 2]
    assert request_gains(ranks, "HR@2").tolist() == [1.0, 0.0, 1.0, 0.0]
    assert request_gains(ranks, "NDCG@3") == pytest.approx([1 / np.log2(3), 0.0, 1.0, 0.5])
    m = ranking_metrics(hits, ks=(1, 2, 3))
    for key, value in m.items():  # the aggregate is exactly the mean of the per-request gains
        assert value == request_gains(ranks, key).mean(), key
    assert first_hit_ranks(np.zeros((0, 4), bool)).shape == (0,)


def test_request_gains_refuse_bad_input():
    from recgym.metrics import first_hit_ranks, request_gains

    for metric in ("MRR@10", "NDCG@", "HR@0", "HR10", "NDCG@2.5"):
        with pytest.raises(ValueError, match="metric must be 'HR@K' or 'NDCG@K'"):
            request_gains(np.array([0]), metric)
    with pytest.raises(ValueError, match="ranks must be integers >= -1"):
        request_gains(np.array([0, -2]), "HR@1")
    with pytest.raises(ValueError, match="ranks must be integers >= -1"):
        request_gains(np.array([0.5]), "HR@1")
    with pytest.raises(ValueError, match="ranks must be a 1-D array"):
        request_gains(np.array([[0]]), "HR@1")
    with pytest.raises(TypeError, match="hits must be booleans"):
        first_hit_ranks(np.array([[0.3, 0.0]]))


def test_bootstrap_of_identical_gains_is_zero():
    from recgym.metrics import paired_bootstrap

    gains = np.random.default_rng(1).random(300)
    r = paired_bootstrap(gains, gains.copy())
    assert (r["difference"], r["low"], r["high"], r["fraction_le_zero"]) == (0.0, 0.0, 0.0, 1.0)
    assert (r["requests"], r["resamples"], r["confidence"]) == (300, 2000, 0.95)


def test_bootstrap_of_a_constant_shift_is_that_shift_only_when_paired():
    from recgym.metrics import paired_bootstrap

    # Varied gains (0/1 hits), shifted by exactly 0.5: every request differs by 0.5, so every paired
    # resample's mean difference is 0.5. Resampling a and b with different indices would mix
    # requests and spread the interval (half the requests hit, half miss).
    b = (np.random.default_rng(2).random(400) < 0.5).astype(float)
    r = paired_bootstrap(b + 0.5, b, resamples=500)
    assert (r["difference"], r["low"], r["high"], r["fraction_le_zero"]) == (0.5, 0.5, 0.5, 0.0)
    r = paired_bootstrap(b, b + 0.5, resamples=500)
    assert (r["difference"], r["low"], r["high"], r["fraction_le_zero"]) == (-0.5, -0.5, -0.5, 1.0)


def test_bootstrap_of_two_requests_follows_its_binomial_distribution():
    from recgym.metrics import paired_bootstrap

    # Differences (0, 1): a resample holds k ~ Binomial(2, 1/2) copies of the 1, so its mean is
    # 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4; the 2.5% and 97.5% quantiles are 0 and 1.
    r = paired_bootstrap([0.0, 1.0], [0.0, 0.0], resamples=20000, seed=3)
    assert r["difference"] == 0.5 and (r["low"], r["high"]) == (0.0, 1.0)
    assert r["fraction_le_zero"] == pytest.approx(0.25, abs=0.015)  # sd sqrt(3/16 / 20000) = 0.003
    # At 40% confidence the quantiles are the 30% and 70% ones: both inside the mass at 0.5.
    narrow = paired_bootstrap([0.0, 1.0], [0.0, 0.0], resamples=20000, seed=3, confidence=0.4)
    assert (narrow["low"], narrow["high"]) == (0.5, 0.5)
    # One request: every resample is that request.
    one = paired_bootstrap([0.75], [0.25])
    assert (one["low"], one["high"]) == (0.5, 0.5)


def test_bootstrap_is_seeded_and_chunked_alike():
    from recgym.metrics import paired_bootstrap

    rng = np.random.default_rng(4)
    a, b = rng.random(5000), rng.random(5000)  # 5000 requests: 838 resamples a chunk, 3 chunks
    first = paired_bootstrap(a, b, resamples=2000, seed=7)
    assert first == paired_bootstrap(a, b, resamples=2000, seed=7)
    assert first != paired_bootstrap(a, b, resamples=2000, seed=8)
    assert first["low"] < first["difference"] < first["high"]
    # The normal approximation: the interval is about +- 1.96 standard errors of the mean difference.
    se = np.std(a - b, ddof=1) / np.sqrt(5000)
    assert first["high"] - first["low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert first["difference"] == pytest.approx(float(np.mean(a - b)))


def test_bootstrap_refuses_bad_input():
    from recgym.metrics import paired_bootstrap

    with pytest.raises(ValueError, match=r"a and b must be 1-D arrays of the same length .* got a of shape "
                                         r"\(3,\) and b of shape \(2,\)"):
        paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"got a of shape \(1, 2\)"):
        paired_bootstrap([[1.0, 2.0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="a and b are empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="a and b must be finite"):
        paired_bootstrap([1.0, np.nan], [1.0, 1.0])
    with pytest.raises(ValueError, match="resamples must be >= 1, got 0"):
        paired_bootstrap([1.0], [1.0], resamples=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        paired_bootstrap([1.0], [1.0], seed=0.5)
    for confidence in (0.0, 1.0, 95, True, "0.95"):
        with pytest.raises(ValueError, match="confidence must be a number in \\(0, 1\\)"):
            paired_bootstrap([1.0], [1.0], confidence=confidence)
