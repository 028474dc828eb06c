import numpy as np
import pytest
from conftest import shared_data_folder
from hypothesis import given, settings
from hypothesis import strategies as st

from recgym.data import Catalogue, Dataset, Examples, load, make_synthetic
from recgym.envs import RecGenTask
from recgym.items import ItemTokenizer
from recgym.prompts import SID_TEMPLATE

SMALL = {"num_items": 300, "num_users": 200}


@pytest.fixture(scope="module")
def task():
    return RecGenTask("synthetic", representation="title", dataset_kwargs=SMALL, vocab_size=800)


def test_prompt_tokens_are_padded_cached_and_bounded(task):
    ids, lens = task.prompt_tokens(np.array([0, 1, 0]))
    assert ids.shape == (3, task.max_prompt_len) and (ids[0] == ids[2]).all()
    assert (ids[1, lens[1]:] == task.pad_token_id).all()
    direct = task.items.encode_prompts([task.request(1).history])[0]
    assert ids[1, : lens[1]].tolist() == direct
    # The computed bound holds for every request of every split.
    for split in ("train", "valid", "test"):
        t = RecGenTask(task.dataset, split=split, tokenizer=task.items)
        _, lens = t.prompt_tokens(np.arange(t.num_requests))
        assert lens.max() <= t.max_prompt_len


def test_too_small_max_prompt_len_names_the_request(task):
    t = RecGenTask(task.dataset, tokenizer=task.items, max_prompt_len=5)
    with pytest.raises(ValueError, match="train row 0"):
        t.prompt_tokens(np.array([0]))


def test_vectorized_rewards_match_item_sets(task):
    tree = task.tree
    rng = np.random.default_rng(0)
    states = np.zeros(200, np.int64)
    while not tree.is_complete(states).all():
        live = ~tree.is_complete(states)
        states[live] = tree.step(states[live], tree.sample_tokens(states[live], rng))
    targets = rng.integers(0, 300, 200)
    targets[:50] = [tree.items(s)[0] for s in states[:50]]  # sure hits
    rewards, hits = task.rewards(states, targets)
    expect = np.array([t in tree.items(s) for s, t in zip(states, targets)])
    np.testing.assert_array_equal(hits, expect)
    assert hits[:50].all() and (rewards == expect.astype(float)).all()


def test_bad_split_and_request():
    with pytest.raises(ValueError, match="split"):
        RecGenTask(make_synthetic(**SMALL), split="dev")
    t = RecGenTask(make_synthetic(**SMALL), representation="sid", vocab_size=500)
    with pytest.raises(ValueError, match="0..299"):
        t.validate_request([1], 300)
    assert t.validate_request(list(range(20)), 1).history == tuple(range(10, 20))


# -- the tree over real catalogues, through the real item tokenization --------------------------

def catalogue_only(name, titles):
    empty = Examples.empty(10)
    return Dataset(name, Catalogue(len(titles), titles=titles), empty, empty, empty)


def real_item_tokenizers(shared_data):
    out = {}
    games = load(shared_data / "games-lcrec", cache=False)
    out["games-sid"] = ItemTokenizer.train(games, "sid", vocab_size=1200)
    office = load(shared_data / "office-d3", cache=False)
    out["office-title"] = ItemTokenizer.train(office, "title", vocab_size=4096)
    lines = (shared_data / "toys-d3" / "info" / "Toys_and_Games_5_2016-10-2018-11.txt").read_text(
        encoding="utf-8").splitlines()
    out["toys-title"] = ItemTokenizer.train(
        catalogue_only("toys", [ln.rsplit("\t", 1)[0] for ln in lines]), "title", vocab_size=4096)
    return out


@pytest.fixture(scope="module")
def real_trees():
    """Synthetic catalogues (titles and SIDs) always; the real ones when shared data is present."""
    ds = make_synthetic(num_items=800, num_users=300, seed=2)
    found = {f"synthetic-{rep}": ItemTokenizer.train(ds, rep, vocab_size=1000) for rep in ("title", "sid")}
    shared = shared_data_folder()
    if shared is not None:
        found.update(real_item_tokenizers(shared))
    return {k: (it, it.build_tree()) for k, it in found.items()}


def test_every_real_item_is_reachable_and_denoted(real_trees):
    for name, (items, tree) in real_trees.items():
        for item, seq in enumerate(items.sequences):
            node = tree.walk(seq.tolist())
            assert node >= 0 and tree.is_complete([node])[0], (name, item)
            assert item in tree.items(node), (name, item)
        # Shared titles / SIDs: one terminal per distinct sequence.
        distinct = len({tuple(s.tolist()) for s in items.sequences})
        assert int(tree.is_terminal.sum()) == distinct, name


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_random_walks_on_real_catalogues_end_in_real_items(real_trees, seed):
    import torch

    rng = np.random.default_rng(seed)
    for name, (items, tree) in real_trees.items():
        states = np.zeros(64, np.int64)
        tables = tree.torch_tables("cpu")
        for _ in range(tree.max_depth + 1):
            live = ~tree.is_complete(states)
            if not live.any():
                break
            mask = tree.mask(states[live], dtype=bool)
            assert mask.any(axis=1).all(), name  # never an empty mask before the end
            torch_mask = tables.mask(torch.as_tensor(states[live])).numpy()
            np.testing.assert_array_equal(mask, torch_mask)
            states[live] = tree.step(states[live], tree.sample_tokens(states[live], rng))
        assert tree.is_complete(states).all(), name
        for s in states[:8]:
            found = tree.items(s)
            assert len(found) and all(np.array_equal(items.sequences[i], items.sequences[found[0]])
                                      for i in found)


# -- bad settings: clear errors naming the setting, never a silent wrong result (issue 15, item 10) --

@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"hit_reward": float("nan")}, ValueError, "hit_reward must be a finite number, got nan"),
    ({"hit_reward": float("inf")}, ValueError, "hit_reward must be a finite number, got inf"),
    ({"miss_reward": -float("inf")}, ValueError, "miss_reward must be a finite number, got -inf"),
    ({"miss_reward": np.float32("nan")}, ValueError, "miss_reward must be a finite number"),
    ({"hit_reward": "1"}, TypeError, "hit_reward must be a number, got '1'"),
    ({"miss_reward": True}, TypeError, "miss_reward must be a number, got True"),
    ({"max_prompt_len": 0}, ValueError, "max_prompt_len must be >= 1, got 0"),
    ({"max_prompt_len": -3}, ValueError, "max_prompt_len must be >= 1, got -3"),
    ({"max_prompt_len": 99.5}, TypeError, "max_prompt_len must be an int, got 99.5"),
    ({"representation": "titles"}, ValueError, r"representation must be one of \('title', 'sid'\)"),
    ({"representation": "sid"}, ValueError, "representation='sid' but the tokenizer writes items as 'title'"),
    ({"template": SID_TEMPLATE}, ValueError, "template differs from the tokenizer's"),
    ({"template": "Recommend {history}"}, ValueError,
     r"template must be one of \('instruction', 'compact'\)"),
    ({"template": 3}, TypeError, "template must be a PromptTemplate, 'instruction' or 'compact'"),
    ({"reward_fn": 1.0}, TypeError, "reward_fn must be callable"),
    ({"max_history": 3}, ValueError, "max_history=3 but the dataset's window is 10"),
    ({"max_history": 2.5}, TypeError, "max_history must be an int"),
    ({"dataset_kwargs": {"num_items": 10}}, ValueError, "dataset_kwargs only apply"),
    ({"vocab_size": 300.5}, TypeError, "vocab_size must be an int, got 300.5"),
    ({"vocab_size": -1}, ValueError, "vocab_size must be >= 1"),
    ({"tokenizer": 5}, TypeError, "tokenizer must be"),
])
def test_bad_settings_are_errors_naming_the_setting(task, kwargs, error, match):
    kwargs = {"tokenizer": task.items, **kwargs}
    with pytest.raises(error, match=match):
        RecGenTask(task.dataset, **kwargs)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"max_history": 0}, ValueError, "max_history must be >= 1, got 0"),
    ({"max_history": -2}, ValueError, "max_history must be >= 1, got -2"),
    ({"max_history": 2.5}, TypeError, "max_history must be an int, got 2.5"),
    ({"dataset_kwargs": [1]}, TypeError, "dataset_kwargs must be a dict"),
    ({"dataset": 5}, TypeError, "dataset must be a Dataset, a name or a folder"),
])
def test_bad_settings_fail_before_loading_the_dataset(monkeypatch, kwargs, error, match):
    import recgym.data

    def no_load(*args, **kw):
        raise AssertionError("the dataset was loaded before the settings were checked")

    monkeypatch.setattr(recgym.data, "load", no_load)
    with pytest.raises(error, match=match):
        RecGenTask(**{"dataset": "synthetic", "dataset_kwargs": SMALL, **kwargs})


@pytest.mark.parametrize("vocab_size", [-1, 0, 10, 256])
def test_vocab_size_is_checked_before_a_tokenizer_is_trained(monkeypatch, task, vocab_size):
    import recgym.items

    def no_training(*args, **kwargs):
        raise AssertionError("a tokenizer was trained before vocab_size was checked")

    monkeypatch.setattr(recgym.items, "train_tokenizer", no_training)
    with pytest.raises(ValueError, match=f"vocab_size must be >= 257 .*got {vocab_size}"):
        RecGenTask(task.dataset, representation="sid", vocab_size=vocab_size)


def test_same_window_and_settings_as_the_tokenizer_are_accepted(task):
    same = RecGenTask(task.dataset, tokenizer=task.items, representation="title",
                      template=task.items.template,
                      max_history=task.dataset.max_history, dataset_kwargs={}, hit_reward=np.float32(2),
                      miss_reward=-1, max_prompt_len=np.int64(task.max_prompt_len))
    assert same.hit_reward == 2.0 and same.miss_reward == -1.0 and same.max_prompt_len == task.max_prompt_len
