"""Tests for recgym.tree: hand-built trees, bad input, properties on random catalogues, real titles."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recgym.tree import PrefixTree

EOS = 9
PROPERTY_SETTINGS = settings(
    derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def shared_data_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("RECGYM_SHARED_DATA", default))


@pytest.fixture
def tree() -> PrefixTree:
    # items: 0 "1 2", 1 "1 3", 2 "1 2" again (non-unique title), 3 "1" (a prefix of the others), 4 "4"
    return PrefixTree([[1, 2, EOS], [1, 3, EOS], [1, 2, EOS], [1, EOS], [4, EOS]], vocab_size=10)


def csr_rows(offsets: np.ndarray, values: np.ndarray) -> list[list[int]]:
    return [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def walk_all(tree: PrefixTree, sequences: list[list[int]]) -> np.ndarray:
    """Node reached by every sequence, stepping all sequences one position at a time (vectorized)."""
    lengths = np.array([len(s) for s in sequences])
    padded = np.full((len(sequences), lengths.max()), -1)
    for i, s in enumerate(sequences):
        padded[i, : len(s)] = s
    nodes = np.zeros(len(sequences), dtype=np.int64)
    for j in range(padded.shape[1]):
        rows = np.flatnonzero(lengths > j)
        nodes[rows] = tree.step(nodes[rows], padded[rows, j])
        assert (nodes[rows] >= 0).all(), "a catalogue sequence left the tree"
    return nodes


def random_walks(
    tree: PrefixTree, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Masked uniform random walks from the root: (final nodes, tokens [count, T] padded -1, steps)."""
    states = tree.initial_states(count)
    tokens = np.full((count, tree.max_depth + 1), -1)
    for t in range(tree.max_depth + 1):
        live = ~tree.is_complete(states)
        if not live.any():
            return states, tokens, t
        offsets, allowed = tree.allowed_tokens(states[live])
        assert (np.diff(offsets) > 0).all(), "a state that is not complete has an empty allowed set"
        chosen = tree.sample_tokens(states[live], rng)
        tokens[live, t] = chosen
        states[live] = tree.step(states[live], chosen)
        assert (states >= 0).all()
    raise AssertionError(f"walks did not end within max_depth={tree.max_depth} steps")


# --------------------------------------------------------------------------------------------------
# Hand-built trees


def test_structure_of_a_small_tree(tree: PrefixTree) -> None:
    # nodes: root, 1, 4, 1-2, 1-3, 1-eos, 4-eos, 1-2-eos, 1-3-eos
    assert tree.num_nodes == 9 and tree.num_items == 5 and tree.vocab_size == 10 and tree.max_depth == 3
    assert tree.root == 0 and tree.initial_states(2).tolist() == [0, 0]
    assert tree.child_offsets.tolist() == [0, 2, 5, 6, 7, 8, 8, 8, 8, 8]
    assert tree.child_tokens.tolist() == [1, 4, 2, 3, EOS, EOS, EOS, EOS]
    assert tree.child_nodes.tolist() == list(range(1, 9))
    assert tree.parent.tolist() == [-1, 0, 0, 1, 1, 1, 2, 3, 4]
    assert tree.token_in.tolist() == [-1, 1, 4, 2, 3, EOS, EOS, EOS, EOS]
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2, 2, 3, 3]
    assert tree.num_children.tolist() == [2, 3, 1, 1, 1, 0, 0, 0, 0]
    assert tree.branches.tolist() == [True, True, False, False, False, False, False, False, False]
    assert tree.is_terminal.tolist() == [False] * 5 + [True] * 4
    assert tree.tokens_in_tree.tolist() == [1, 2, 3, 4, EOS]
    assert tree.max_children == 3
    assert repr(tree) == "PrefixTree(num_items=5, num_nodes=9, vocab_size=10, max_depth=3)"


def test_duplicate_sequences_denote_a_set_of_items(tree: PrefixTree) -> None:
    leaf = tree.walk([1, 2, EOS])
    assert tree.items(leaf).tolist() == [0, 2]
    assert tree.item_nodes[0] == tree.item_nodes[2] == leaf
    offsets, values = tree.items_batch([leaf, tree.walk([1, EOS]), tree.root, tree.walk([4, EOS])])
    assert csr_rows(offsets, values) == [[0, 2], [3], [], [4]]
    assert tree.sequence_of(2).tolist() == [1, 2, EOS]


def test_prefix_of_another_sequence_is_handled_by_the_end_token(tree: PrefixTree) -> None:
    node = tree.walk([1])
    assert not tree.is_complete([node])[0]
    assert tree.allowed_tokens([node])[1].tolist() == [2, 3, EOS]
    assert tree.items(tree.walk([1, EOS])).tolist() == [3]
    with pytest.raises(ValueError, match="strict prefix"):
        PrefixTree([[1, 2], [1, 2, 3]], vocab_size=4)


def test_queries(tree: PrefixTree) -> None:
    n1, n12 = tree.walk([1]), tree.walk([1, 2])
    offsets, tokens = tree.allowed_tokens([0, n1, n12, tree.walk([1, 2, EOS])])
    assert csr_rows(offsets, tokens) == [[1, 4], [2, 3, EOS], [EOS], []]
    assert tree.allowed_tokens([])[0].tolist() == [0] and tree.allowed_tokens([])[1].size == 0
    mask = tree.mask([0, n1])
    assert mask.dtype == np.int8 and mask.shape == (2, 10)
    assert np.flatnonzero(mask[0]).tolist() == [1, 4] and np.flatnonzero(mask[1]).tolist() == [2, 3, EOS]
    assert tree.mask([n1], dtype=bool).dtype == bool
    assert tree.step([0, 0, n1, n1, 0, 0], [1, 2, EOS, 4, -3, 10]).tolist() == [n1, -1, 5, -1, -1, -1]
    assert tree.is_valid([0, 0], [4, 5]).tolist() == [True, False]
    assert tree.step(np.array([[0, n1]]), np.array([[1, 3]])).shape == (1, 2)  # elementwise, any shape
    assert tree.branching([0, n1, n12]).tolist() == [True, True, False]
    assert tree.walk([]) == 0 and tree.walk([1, 2]) == n12
    assert tree.walk([2]) == -1 and tree.walk([1, 2, EOS, 1]) == -1
    assert tree.sequence_of(4).tolist() == [4, EOS]
    with pytest.raises(KeyError):
        tree.sequence_of(99)


def test_allowed_padded(tree: PrefixTree) -> None:
    n1 = tree.walk([1])
    tokens, valid = tree.allowed_padded([0, n1, tree.walk([1, EOS])])
    assert tokens.tolist() == [[1, 4, -1], [2, 3, EOS], [-1, -1, -1]]
    assert valid.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    tokens, valid = tree.allowed_padded([0], width=4, pad=0)
    assert tokens.tolist() == [[1, 4, 0, 0]] and valid.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="drop allowed tokens"):
        tree.allowed_padded([n1], width=2)
    assert tree.allowed_padded([])[0].shape == (0, 0)


def test_mask_into_a_reused_buffer(tree: PrefixTree) -> None:
    out = np.ones((2, 10), dtype=np.float32)
    result = tree.mask([tree.walk([4]), 0], out=out)
    assert result is out and out.tolist()[0] == [0.0] * 9 + [1.0]
    assert np.flatnonzero(out[1]).tolist() == [1, 4]
    with pytest.raises(ValueError, match="shape"):
        tree.mask([0], out=out)
    transposed = np.ones((10, 2), dtype=np.int8).T  # not C-contiguous: no flat view
    tree.mask([tree.walk([4]), 0], out=transposed)
    np.testing.assert_array_equal(transposed, out)


def test_paths_and_branching_flags(tree: PrefixTree) -> None:
    tokens = np.array([[1, 2, EOS], [4, EOS, -1], [1, EOS, -1]])
    assert tree.path_states(tokens).tolist() == [[0, 1, 3], [0, 2, -1], [0, 1, -1]]
    expected = [[True, True, False], [True, False, False], [True, True, False]]
    assert tree.path_branching(tokens).tolist() == expected
    assert tree.path_branching([4, EOS]).tolist() == [True, False]
    with pytest.raises(ValueError, match="row 1: token 5 at position 1 leaves"):
        tree.path_states([[1, 2, EOS], [4, 5, -1]])
    with pytest.raises(ValueError, match="follows padding"):
        tree.path_states([[1, -1, EOS]])


def test_sample_tokens_only_draws_allowed_tokens(tree: PrefixTree) -> None:
    rng = np.random.default_rng(0)
    states = np.array([0, tree.walk([1]), tree.walk([1, EOS])] * 200)
    tokens = tree.sample_tokens(states, rng)
    assert tree.is_valid(states[:2], tokens[:2]).all() and (tokens[2::3] == -1).all()
    assert set(tokens[1::3].tolist()) == {2, 3, EOS}  # all children get drawn


def test_custom_item_ids_and_errors() -> None:
    tree = PrefixTree([[3, 0], [3, 0], [2, 0]], item_ids=[70, 5, 12], vocab_size=4)
    assert tree.items(tree.walk([3, 0])).tolist() == [5, 70]
    assert tree.sequence_of(12).tolist() == [2, 0]
    with pytest.raises(ValueError, match="item id 5 appears more than once"):
        PrefixTree([[1, 0], [2, 0]], item_ids=[5, 5], vocab_size=3)
    with pytest.raises(ValueError, match="item_ids"):
        PrefixTree([[1, 0], [2, 0]], item_ids=[5], vocab_size=3)


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        ([], "at least one sequence"),
        ([[1, 0], []], "sequence 1 .item id 1. is empty"),
        (
            [[1, 0], [2, 3, 0]],
            r"sequence 1 \(item id 1\) has token 3 at position 1, outside \[0, vocab_size=3\)",
        ),
        ([[1, 0], [-1, 0]], "sequence 1 .item id 1. has token -1 at position 0"),
        ([[1, 2], [1, 2, 0]], "strict prefix"),
    ],
)
def test_bad_sequences(sequences: list[list[int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrefixTree(sequences, vocab_size=3)


def test_bad_vocab_and_dtypes() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        PrefixTree([[0]], vocab_size=0)
    with pytest.raises(TypeError, match="integers"):
        PrefixTree([[1.5, 0]], vocab_size=3)
    with pytest.raises(TypeError, match="integers"):
        PrefixTree([[1, 0]], vocab_size=3).allowed_tokens([0.0])


@pytest.mark.parametrize("bad", [-1, 9, 10**12])
def test_out_of_range_states(tree: PrefixTree, bad: int) -> None:
    for query in (tree.allowed_tokens, tree.mask, tree.is_complete, tree.branching, tree.items_batch):
        with pytest.raises(ValueError, match=f"state {bad} is not a node"):
            query([0, bad])
    with pytest.raises(ValueError, match="not a node"):
        tree.step([bad], [1])
    with pytest.raises(ValueError, match="not a node"):
        tree.items(bad)
    with pytest.raises(ValueError, match="1-D"):
        tree.allowed_tokens([[0]])


def test_arrays_are_read_only(tree: PrefixTree) -> None:
    with pytest.raises(ValueError):
        tree.child_tokens[0] = 5


def test_save_load_and_pickle(tree: PrefixTree, tmp_path: Path) -> None:
    tree.save(tmp_path / "tree.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["tree.npz"]  # no temporary file left behind
    for copy in (PrefixTree.load(tmp_path / "tree.npz"), pickle.loads(pickle.dumps(tree))):
        for name in ("child_offsets", "child_tokens", "item_offsets", "item_values", "depth", "is_terminal"):
            np.testing.assert_array_equal(getattr(copy, name), getattr(tree, name))
        assert copy.sequence_of(3).tolist() == [1, EOS] and copy.vocab_size == 10


def test_import_does_not_load_torch() -> None:
    code = "import sys, recgym, recgym.tree; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_tables(tree: PrefixTree) -> None:
    torch = pytest.importorskip("torch")
    tables = tree.torch_tables()
    assert tree.torch_tables("cpu") is tables  # cached per device
    states = torch.tensor([0, tree.walk([1]), tree.walk([1, EOS])])
    offsets, tokens = tables.allowed(states)
    assert csr_rows(offsets.numpy(), tokens.numpy()) == [[1, 4], [2, 3, EOS], []]
    mask = tables.mask(states)
    assert mask.dtype == torch.bool and mask.shape == (3, 10)
    np.testing.assert_array_equal(mask.numpy(), tree.mask(states.numpy(), dtype=bool))
    assert tables.mask(states[2:]).sum() == 0  # only complete states: nothing allowed
    wide = tables.mask(states, vocab_size=16)  # a model's embedding matrix may be padded
    assert wide.shape == (3, 16) and torch.equal(wide[:, :10], mask) and not wide[:, 10:].any()
    with pytest.raises(ValueError, match="smaller"):
        tables.mask(states, vocab_size=5)
    big = tree.torch_tables().step(states.int(), torch.tensor([1, 3, 1], dtype=torch.int32))
    assert big.tolist() == [tree.walk([1]), tree.walk([1, 3]), -1]
    assert tables.is_complete(states).tolist() == [False, False, True]
    assert tables.branching(states).tolist() == [True, True, False]


# --------------------------------------------------------------------------------------------------
# Properties on random catalogues


@st.composite
def catalogues(draw: st.DrawFn) -> tuple[list[list[int]], list[int] | None, int]:
    vocab = draw(st.integers(2, 7))
    end = vocab - 1  # the end token never occurs inside a sequence
    bodies = draw(st.lists(st.lists(st.integers(0, vocab - 2), max_size=6), min_size=1, max_size=25))
    sequences = [body + [end] for body in bodies]
    n = len(bodies)
    ids = draw(st.none() | st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    return sequences, ids, vocab


@PROPERTY_SETTINGS
@given(catalogues())
def test_every_item_is_reachable_and_denoted_by_its_terminal(catalogue) -> None:
    sequences, ids, vocab = catalogue
    tree = PrefixTree(sequences, ids, vocab_size=vocab)
    ids = list(range(len(sequences))) if ids is None else ids
    for sequence, item in zip(sequences, ids):
        node = tree.walk(sequence)
        assert node >= 0 and tree.is_complete([node])[0] and item in tree.items(node)
        assert tree.sequence_of(item).tolist() == sequence
        assert tree.path_branching(sequence).tolist() == tree.branching(tree.path_states(sequence)).tolist()
    # every terminal denotes exactly the items with that sequence
    expected: dict[tuple[int, ...], list[int]] = {}
    for sequence, item in zip(sequences, ids):
        expected.setdefault(tuple(sequence), []).append(item)
    terminals = np.flatnonzero(tree.is_terminal)
    assert len(terminals) == len(expected)
    for node in terminals:
        assert tree.items(node).tolist() == sorted(expected[tuple(tree.sequence_of(tree.items(node)[0]))])
    assert tree.num_nodes == 1 + len({tuple(s[:k]) for s in sequences for k in range(1, len(s) + 1)})


@PROPERTY_SETTINGS
@given(catalogues(), st.integers(0, 2**32 - 1))
def test_masks_agree_with_allowed_lists_and_are_never_empty(catalogue, seed: int) -> None:
    sequences, ids, vocab = catalogue
    tree = PrefixTree(sequences, ids, vocab_size=vocab)
    nodes = np.arange(tree.num_nodes)
    offsets, tokens = tree.allowed_tokens(nodes)
    counts = np.diff(offsets)
    assert (counts[~tree.is_terminal] >= 1).all() and (counts[tree.is_terminal] == 0).all()
    assert (tree.branches == (counts >= 2)).all()
    mask = tree.mask(nodes)
    rows = csr_rows(offsets, tokens)
    for node in nodes:
        assert np.flatnonzero(mask[node]).tolist() == rows[node]
        # step agrees with the allowed list for every token of the vocabulary
        assert np.flatnonzero(tree.is_valid(np.full(vocab, node), np.arange(vocab))).tolist() == rows[node]
    padded, valid = tree.allowed_padded(nodes)
    assert [p[v].tolist() for p, v in zip(padded, valid)] == rows
    final, walked, steps = random_walks(tree, 50, np.random.default_rng(seed))
    assert steps <= tree.max_depth and tree.is_complete(final).all()
    for node, path in zip(final, walked):
        assert tree.items(node).size > 0
        assert all(tree.sequence_of(item).tolist() == path[path >= 0].tolist() for item in tree.items(node))


@PROPERTY_SETTINGS
@given(catalogues(), st.integers(0, 2**32 - 1), st.sampled_from([np.int8, bool]))
def test_mask_buffer_matches_fresh_masks_update_after_update(catalogue, seed: int, dtype) -> None:
    sequences, ids, vocab = catalogue
    tree = PrefixTree(sequences, ids, vocab_size=vocab)
    rng = np.random.default_rng(seed)
    buffer = tree.mask_buffer(5, dtype=dtype)
    for step in range(8):  # rows go from wide to narrow nodes and back: stale entries must be cleared
        states = rng.integers(0, tree.num_nodes, size=5)
        full = rng.random(5) < 0.5 if step % 3 else None  # all-ones rows come, stay and go
        result = buffer.update(states, full=full)
        expected = tree.mask(states, dtype=dtype)
        if full is not None:
            expected[full] = 1
        assert result is buffer.array and result.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(result, expected)


def test_mask_buffer_errors(tree: PrefixTree) -> None:
    with pytest.raises(ValueError, match="batch must be >= 1"):
        tree.mask_buffer(0)
    buffer = tree.mask_buffer(2)
    with pytest.raises(ValueError, match="3 entries, the buffer has 2 rows"):
        buffer.update([0, 0, 0])
    with pytest.raises(ValueError):
        buffer.update([0, tree.num_nodes])  # out of range, as for every query
    with pytest.raises(ValueError, match="full must be 2 booleans"):
        buffer.update([0, 0], full=[1, 0])


@PROPERTY_SETTINGS
@given(catalogues(), st.integers(0, 2**32 - 1))
def test_torch_and_numpy_agree(catalogue, seed: int) -> None:
    pytest.importorskip("torch")
    sequences, ids, vocab = catalogue
    tree = PrefixTree(sequences, ids, vocab_size=vocab)
    assert_torch_agrees(tree, np.random.default_rng(seed), batch=17)


def assert_torch_agrees(tree: PrefixTree, rng: np.random.Generator, batch: int) -> None:
    import torch

    tables = tree.torch_tables()
    states = rng.integers(0, tree.num_nodes, batch)
    tokens = rng.integers(-1, tree.vocab_size + 1, batch)
    tokens[::2] = tree.sample_tokens(states[::2], rng)  # half of them valid where possible
    ts, tt = torch.from_numpy(states), torch.from_numpy(tokens)
    offsets, allowed = tables.allowed(ts)
    np_offsets, np_allowed = tree.allowed_tokens(states)
    np.testing.assert_array_equal(offsets.numpy(), np_offsets)
    np.testing.assert_array_equal(allowed.numpy(), np_allowed)
    for width in (None, tree.max_children):
        padded, valid = tables.allowed_padded(ts, width)
        np_padded, np_valid = tree.allowed_padded(states, width)
        np.testing.assert_array_equal(padded.numpy(), np_padded)
        np.testing.assert_array_equal(valid.numpy(), np_valid)
    np.testing.assert_array_equal(tables.mask(ts).numpy(), tree.mask(states, dtype=bool))
    np.testing.assert_array_equal(tables.step(ts, tt).numpy(), tree.step(states, tokens))
    np.testing.assert_array_equal(tables.is_complete(ts).numpy(), tree.is_complete(states))
    np.testing.assert_array_equal(tables.branching(ts).numpy(), tree.branching(states))


# --------------------------------------------------------------------------------------------------
# Real titles: the Games catalogue of BIGRec (17,408 titles, many duplicates)


@pytest.fixture(scope="module")
def games_titles() -> tuple[list[str], list[int]]:
    path = shared_data_dir() / "games-bigrec" / "id2name.txt"
    if not path.is_file():
        pytest.skip(f"real Games titles not found at {path} (set RECGYM_SHARED_DATA to the shared data dir)")
    lines = path.read_text(encoding="utf-8").split("\n")
    pairs = [line.rsplit("\t", 1) for line in lines if line]
    return [title for title, _ in pairs], [int(item) for _, item in pairs]


@pytest.fixture(scope="module")
def games_bytes(games_titles: tuple[list[str], list[int]]) -> tuple[PrefixTree, list[list[int]]]:
    # No tokenizer yet: the UTF-8 bytes of the title in context (' "' + title + '"'), then end token 256.
    titles, ids = games_titles
    sequences = [list(f' "{title}"'.encode()) + [256] for title in titles]
    return PrefixTree(sequences, ids, vocab_size=257), sequences


def test_games_titles_are_reachable_and_duplicates_share_a_terminal(games_titles, games_bytes) -> None:
    (titles, ids), (tree, sequences) = games_titles, games_bytes
    assert tree.num_items == len(titles) == 17408
    nodes = walk_all(tree, sequences)
    assert tree.is_complete(nodes).all()
    np.testing.assert_array_equal(nodes, tree.item_nodes)
    by_title: dict[str, list[int]] = {}
    for title, item in zip(titles, ids):
        by_title.setdefault(title, []).append(item)
    assert len(np.flatnonzero(tree.is_terminal)) == len(by_title) < len(titles)
    offsets, values = tree.items_batch(nodes)
    assert csr_rows(offsets, values) == [sorted(by_title[title]) for title in titles]
    assert tree.sequence_of(ids[-1]).tolist() == sequences[-1]
    counts = tree.num_children[~tree.is_terminal]
    assert (counts >= 1).all()


def test_games_titles_masked_random_walks(games_titles, games_bytes) -> None:
    (titles, ids), (tree, _) = games_titles, games_bytes
    title_of = dict(zip(ids, titles))
    final, walked, steps = random_walks(tree, 500, np.random.default_rng(0))
    assert steps <= tree.max_depth and tree.is_complete(final).all()
    for node, path in zip(final, walked):
        text = bytes(path[(path >= 0) & (path < 256)].tolist()).decode("utf-8")
        assert {text} == {f' "{title_of[item]}"' for item in tree.items(node)}


def test_games_titles_torch_agrees(games_bytes) -> None:
    pytest.importorskip("torch")
    tree, _ = games_bytes
    for seed in range(3):
        assert_torch_agrees(tree, np.random.default_rng(seed), batch=256)


def test_mask_of_wide_nodes_uses_cached_rows_and_matches_index_lists():
    # A root with 300 children and a second wide node: both take the cached-row path.
    rng = np.random.default_rng(0)
    eos = 999
    seqs = [[t, eos] for t in range(300)] + [[5, 300 + t, eos] for t in range(280)] + [[7, 8, eos]]
    tree = PrefixTree(seqs, vocab_size=1000)
    wide_nodes, _ = tree._wide_rows()
    assert tree.root in wide_nodes and tree.walk([5]) in wide_nodes
    states = rng.choice(np.flatnonzero(~tree.is_terminal), 200)
    states[:3] = [tree.root, tree.walk([5]), tree.walk([7])]
    offsets, tokens = tree.allowed_tokens(states)
    for dtype, out in ((np.int8, None), (bool, np.ones((200, 1000), bool))):
        mask = tree.mask(states, out=out, dtype=dtype)
        expect = np.zeros((200, 1000), bool)
        expect[np.repeat(np.arange(200), np.diff(offsets)), tokens] = True
        np.testing.assert_array_equal(mask.astype(bool), expect)


# -- bad input: clear errors naming the argument, never a silent truncation (issue 15, item 10) --

@pytest.mark.parametrize("vocab_size", [9.7, True, "10", np.float64(10.0)])
def test_vocab_size_must_be_an_int(vocab_size) -> None:
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        PrefixTree([[1, 0]], vocab_size=vocab_size)


def test_integral_arguments_are_not_truncated(tree: PrefixTree) -> None:
    with pytest.raises(TypeError, match="nodes must hold integers"):
        tree.paths([1.5])
    for bad in (-1, tree.num_nodes):
        with pytest.raises(ValueError, match=f"state {bad} is not a node"):
            tree.paths([bad])
    with pytest.raises(TypeError, match="width must be an int"):
        tree.allowed_padded([0], width=2.5)
    with pytest.raises(TypeError, match="pad must be an int"):
        tree.allowed_padded([0], pad=0.5)
    with pytest.raises(TypeError, match="pad must be an int"):
        tree.path_states([1, 2, EOS], pad=0.5)
    for batch in (2.5, True):
        with pytest.raises(TypeError, match="batch must be an int"):
            tree.mask_buffer(batch)
        with pytest.raises(TypeError, match="batch must be an int"):
            tree.initial_states(batch)
    with pytest.raises(ValueError, match="batch must be >= 0"):
        tree.initial_states(-1)
    for item in (True, 1.0):
        with pytest.raises(TypeError, match="item_id must be an int"):
            tree.sequence_of(item)
    assert tree.sequence_of(np.int32(1)).tolist() == [1, 3, EOS]


def test_covered_nodes_by_hand() -> None:
    eos = 9
    # items 0 and 2 share a title: their terminal denotes both
    tree = PrefixTree([[1, 2, eos], [1, 3, eos], [1, 2, eos], [4, eos]], vocab_size=10)
    a, b, c = tree.walk([1, 2]), tree.walk([1, 2, eos]), tree.walk([1])

    def covered(rows: list[list[int]]) -> list[set[int]]:
        r, n = tree.covered_nodes(rows)
        return [set(n[r == i].tolist()) for i in range(len(rows))]

    assert covered([[0, -1, -1]]) == [set()]  # item 2 is still under [1, 2, eos]
    assert covered([[0, 2, 0]]) == [{a, b}]  # repeats count once
    assert covered([[2, 0, 1]]) == [{a, b, c, tree.walk([1, 3]), tree.walk([1, 3, eos])}]
    assert covered([[3, -1, -1], [-1, -1, -1]]) == [{tree.walk([4]), tree.walk([4, eos])}, set()]
    r, n = tree.covered_nodes([[0, 1, 2, 3]])
    assert tree.root in n.tolist()  # the whole catalogue excluded
    with pytest.raises(KeyError, match="row 1: unknown item id 7"):
        tree.covered_nodes([[0, -1], [7, 1]])
    with pytest.raises(ValueError, match=r"\[B, H\]"):
        tree.covered_nodes([0, 1])


def test_covered_nodes_match_brute_force_and_survive_save(tmp_path) -> None:
    rng = np.random.default_rng(0)
    eos = 5
    seqs = [[*rng.integers(0, 4, size=int(rng.integers(1, 4))).tolist(), eos] for _ in range(40)]
    tree = PrefixTree(seqs, item_ids=np.arange(40) * 3, vocab_size=6)
    tree.save(tmp_path / "t.npz")
    loaded = PrefixTree.load(tmp_path / "t.npz")
    # brute force: the items whose path passes through each node
    through = [set() for _ in range(tree.num_nodes)]
    for i, seq in enumerate(seqs):
        for d in range(len(seq) + 1):
            through[tree.walk(seq[:d])].add(3 * i)
    sets = [rng.choice(40, size=int(rng.integers(0, 30)), replace=True) * 3 for _ in range(6)]
    width = max(map(len, sets))
    padded = np.array([np.pad(s, (0, width - len(s)), constant_values=-1) for s in sets])
    for t in (tree, loaded):
        r, n = t.covered_nodes(padded)
        assert np.all(np.diff(r * t.num_nodes + n) > 0)  # sorted, distinct keys
        for i, s in enumerate(sets):
            expected = {node for node in range(t.num_nodes) if through[node] <= set(s.tolist())}
            assert set(n[r == i].tolist()) == expected
