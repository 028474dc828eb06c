import numpy as np
import pytest
import torch

from agents.baselines import PopularityRecommender
from agents.model.policy import LLMPolicy
from agents.training.evaluate import evaluate, evaluate_ranker, select_rows
from recgym.data import Catalogue, Dataset, Examples
from recgym.envs import RecGenTask


def shared_title_dataset():
    # Items 0 and 1 share a title: generating it is a hit for either target.
    titles = ["Twin Game", "Twin Game", "Solo Game", "Other Thing", "Last One"]
    ex = Examples.from_lists([[2], [3], [4], [2, 3]], [0, 1, 2, 3], max_history=3)
    return Dataset("twins", Catalogue(5, titles=titles), ex, ex, ex)


def test_an_output_that_denotes_several_items_hits_each_of_them():
    ds = shared_title_dataset()
    task = RecGenTask(ds, split="test", representation="title", vocab_size=300)
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    # 4 distinct outputs exist: with beam 4 every request finds its target within 4 ranks.
    m = evaluate(policy, task, beam=4, ks=(1, 4), progress=False)
    assert m["HR@4"] == 1.0 and m["requests"] == 4
    terminals, _ = policy.beam_search(*task.prompt_tokens(np.arange(2)), width=4)
    twin = task.tree.walk(task.items.sequences[0].tolist())
    assert set(task.tree.items(twin).tolist()) == {0, 1} and twin in terminals[0]


def test_policy_metrics_match_a_hand_count():
    ds = shared_title_dataset()
    task = RecGenTask(ds, split="test", representation="title", vocab_size=300)
    policy = LLMPolicy.from_config("tiny", task.items, seed=1, device="cpu")
    terminals, _ = policy.beam_search(*task.prompt_tokens(np.arange(4)), width=4, k=1)
    expect = np.mean([ds.test.target[i] in task.tree.items(int(terminals[i, 0])) for i in range(4)])
    assert evaluate(policy, task, beam=4, ks=(1,), progress=False)["HR@1"] == expect


def test_ranker_protocol_and_row_sampling():
    ds = shared_title_dataset()
    pop = PopularityRecommender().fit(ds.train, 5)
    m = evaluate_ranker(pop, ds.test, ks=(1, 5))
    assert m["HR@5"] == 1.0 and m["requests"] == 4
    rows = select_rows(100, 10, seed=0)
    assert len(rows) == 10 and (np.diff(rows) > 0).all()
    assert select_rows(5, None).tolist() == [0, 1, 2, 3, 4]


def test_beam_must_cover_k():
    ds = shared_title_dataset()
    task = RecGenTask(ds, split="test", representation="title", vocab_size=300)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="beam"):
        evaluate(LLMPolicy.from_config("tiny", task.items, device="cpu"), task, beam=5, ks=(1, 10))


def test_per_request_ranks_are_the_first_hits_of_the_searched_rows():
    from agents.training.evaluate import request_hits
    from recgym.metrics import request_gains

    ds = shared_title_dataset()
    task = RecGenTask(ds, split="test", representation="title", vocab_size=300)
    policy = LLMPolicy.from_config("tiny", task.items, seed=1, device="cpu")
    plain = evaluate(policy, task, beam=4, ks=(1, 3), max_requests=3, seed=5, progress=False)
    m = evaluate(policy, task, beam=4, ks=(1, 3), max_requests=3, seed=5, progress=False, per_request=True)
    assert {k: v for k, v in m.items() if k not in ("rows", "first_hit_ranks")} == plain  # default unchanged
    assert "first_hit_ranks" not in plain and m["rows"] == select_rows(4, 3, seed=5).tolist()
    hits, _ = request_hits(policy, task, np.array(m["rows"]), beam=4, k=3, progress=False)
    expect = [int(np.flatnonzero(h)[0]) if h.any() else -1 for h in hits]
    assert m["first_hit_ranks"] == expect and all(isinstance(r, int) for r in m["first_hit_ranks"])
    for key in ("HR@1", "NDCG@3"):
        assert request_gains(m["first_hit_ranks"], key).mean() == m[key]


def test_ranker_per_request_ranks():
    ds = shared_title_dataset()
    pop = PopularityRecommender().fit(ds.train, 5)
    m = evaluate_ranker(pop, ds.test, ks=(1, 3), per_request=True)
    ranked = pop.rank(ds.test, 3)
    expect = [int(np.flatnonzero(r == t)[0]) if (r == t).any() else -1
              for r, t in zip(ranked, ds.test.target)]
    assert m["rows"] == [0, 1, 2, 3] and m["first_hit_ranks"] == expect
    assert m["HR@1"] == np.mean([r == 0 for r in expect])
    assert "rows" not in evaluate_ranker(pop, ds.test, ks=(1, 3))


def test_excluding_history_prunes_the_search_whatever_the_weights():
    ds = shared_title_dataset()  # row 3's target (3) is in its own history [2, 3]
    task = RecGenTask(ds, split="test", representation="title", vocab_size=300)
    for seed in (0, 1):
        policy = LLMPolicy.from_config("tiny", task.items, seed=seed, device="cpu")
        m = evaluate(policy, task, beam=4, ks=(3,), progress=False, exclude_history=True, per_request=True)
        # 4 distinct outputs; each row loses its history's: rows 0-2 find their target among the 3 left,
        # row 3 has 2 outputs left and can never hit
        assert m["HR@3"] == 0.75 and m["first_hit_ranks"][3] == -1 and m["history_excluded"] is True
        assert m["invalid_rate"] == 1 / 12
        assert evaluate(policy, task, beam=4, ks=(4,), progress=False)["HR@4"] == 1.0  # off: all 4


class FixedRanker:
    def rank(self, examples, k):
        return np.tile(np.array([2, 3, 0, 1, 4])[:k], (len(examples.target), 1))


def test_ranker_with_history_excluded():
    ds = shared_title_dataset()  # histories [2], [3], [4], [2, 3]; targets 0, 1, 2, 3
    own = evaluate_ranker(FixedRanker(), ds.test, ks=(1, 3), per_request=True)
    assert own["first_hit_ranks"] == [2, -1, 0, 1] and own["history_excluded"] is False
    m = evaluate_ranker(FixedRanker(), ds.test, ks=(1, 3), per_request=True, exclude_history=True)
    # lists without history: [3, 0, 1], [2, 0, 1], [2, 3, 0], [0, 1, 4]
    assert m["first_hit_ranks"] == [1, 2, 0, -1] and m["history_excluded"] is True
    assert m["HR@1"] == 0.25 and m["HR@3"] == 0.75
    assert m["NDCG@3"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(4) + 1) / 4)


def test_the_protocol_not_the_model_decides_on_history():
    from dataclasses import replace

    from agents.baselines import SASRecRecommender

    def first_hits(ranked):
        return [int(np.flatnonzero(r[:3] == t)[0]) if (r[:3] == t).any() else -1
                for r, t in zip(ranked, ds.test.target)]

    ds = shared_title_dataset()
    model = SASRecRecommender(hidden=8, heads=1, epochs=2, seed=0, progress=False).fit(ds.train, 5)
    assert model.config.exclude_history  # SASRec's own default: history items ranked last
    own_list = model.rank(ds.test, 5)
    model.config = replace(model.config, exclude_history=False)
    plain_list = model.rank(ds.test, 5)
    model.config = replace(model.config, exclude_history=True)
    assert first_hits(own_list) != first_hits(plain_list)  # row 3's target is in its history
    m = evaluate_ranker(model, ds.test, ks=(1, 3), per_request=True)
    assert m["first_hit_ranks"] == first_hits(plain_list) and model.config.exclude_history  # restored
