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
