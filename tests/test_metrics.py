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
