"""recgym.sids: RQ-KMeans, balanced k-means, collision handling, index files, applying an index."""

import json

import numpy as np
import pytest

from recgym.data import Catalogue, Dataset, format_sid, make_synthetic, read_lcrec
from recgym.envs import RecGenTask
from recgym.envs.recgen import RecGenEnv
from recgym.sids import (
    build_sid_index,
    capacitated_assignment,
    extra_level,
    kmeans,
    random_sids,
    read_sid_index,
    residual_kmeans,
    sid_report_path,
    sid_stats,
    sinkhorn_decollide,
    titles_fingerprint,
    with_sid_index,
    write_sid_index,
)

QUADRANTS = np.array([[10.0, 10.0], [10.0, -10.0], [-10.0, 10.0], [-10.0, -10.0]])
OFFSETS = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def quadrant_points():
    """16 points: every quadrant centre plus every offset; (points, centre of each, offset of each)."""
    centre = np.repeat(QUADRANTS, 4, axis=0)
    offset = np.tile(OFFSETS, (4, 1))
    return (centre + offset).astype(np.float32), centre, offset


# -- quantiser exactness -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("balanced", [False, True])
def test_residual_kmeans_recovers_hand_known_codebooks(seed, balanced):
    # Level 1 must find the quadrant centres, level 2 (on the residuals) the four offsets; the two
    # levels then reconstruct every point exactly. Without the residual step level 2 would
    # re-cluster the quadrants, and its codewords would not be the offsets.
    x, centre, offset = quadrant_points()
    rq = residual_kmeans(x, levels=2, codes=4, balanced=balanced, seed=seed, progress=False)
    np.testing.assert_allclose(rq.codebooks[0][rq.codes[:, 0]], centre, atol=1e-5)
    np.testing.assert_allclose(rq.codebooks[1][rq.codes[:, 1]], offset, atol=1e-5)
    np.testing.assert_allclose(rq.residual, 0.0, atol=1e-5)
    assert len(np.unique(rq.codes, axis=0)) == 16
    np.testing.assert_allclose(rq.residual_before(1), offset, atol=1e-5)


def test_kmeans_lloyd_fixed_point_and_inertia_by_hand():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]], dtype=np.float32)
    res = kmeans(x, 2, seed=0)
    assert sorted(res.centers[:, 0].tolist()) == [1.0, 11.0]
    assert res.labels[:3].tolist() == [res.labels[0]] * 3 and res.labels[3:].tolist() == [res.labels[3]] * 3
    assert res.inertia == pytest.approx(4.0)  # (1 + 0 + 1) per cluster


def test_kmeans_reseeds_empty_clusters_and_checks_arguments():
    x = np.zeros((6, 2), dtype=np.float32)
    x[3:] = 5.0
    res = kmeans(x, 3, seed=0)  # only two distinct points: a third cluster ends up at one of them
    assert set(np.unique(res.labels).tolist()) <= {0, 1, 2} and res.inertia == pytest.approx(0.0)
    with pytest.raises(ValueError, match="k must be an int in 1..6"):
        kmeans(x, 7)
    with pytest.raises(ValueError, match="codes=8 per level but only 6 items"):
        residual_kmeans(x, levels=1, codes=8, progress=False)
    with pytest.raises(ValueError, match="item 2 are not finite"):
        residual_kmeans(np.where(np.arange(6)[:, None] == 2, np.nan, x), levels=1, codes=2, progress=False)


# -- balanced assignment -----------------------------------------------------------------------


def test_capacitated_assignment_hand_example():
    # Column 0 holds one row: the nearest one (row 0). Rows 1 and 2 prefer column 0 too but must
    # go to column 1. Plain argmin would put all three in column 0.
    d = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 3.0]])
    assert capacitated_assignment(d, np.array([1, 2])).tolist() == [0, 1, 1]
    assert capacitated_assignment(d, np.array([3, 0])).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="total capacity 2 < 3"):
        capacitated_assignment(d, np.array([1, 1]))


def test_capacitated_assignment_is_stable_and_respects_capacity():
    rng = np.random.default_rng(3)
    d = rng.random((300, 12)) + (np.arange(12) * 0.05)[None, :]  # every row likes column 0 best
    cap = rng.integers(20, 40, size=12)
    label = capacitated_assignment(d, cap)
    counts = np.bincount(label, minlength=12)
    assert (label >= 0).all() and (counts <= cap).all()
    # Stability, checked independently: whenever row i prefers column c to its own, c is full of
    # rows at least as near to c as i is.
    own = d[np.arange(300), label]
    for c in range(12):
        members = d[label == c, c]
        envious = np.flatnonzero(d[:, c] < own)
        assert counts[c] == cap[c] or not envious.size
        if envious.size:
            assert members.max() <= d[envious, c].min()


def test_balanced_kmeans_bounds_every_cluster_size():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (183, 4)), rng.normal(5, 1.0, (20, 4))]).astype(np.float32)
    balanced = kmeans(x, 8, balanced=True, seed=0)
    sizes = np.bincount(balanced.labels, minlength=8)
    assert set(sizes.tolist()) <= {25, 26} and sizes.sum() == 203  # floor / ceil of 203 / 8
    plain = np.bincount(kmeans(x, 8, seed=0).labels, minlength=8)
    assert plain.max() > 26  # the data is skewed: the bound is the balancing's doing
    rq = residual_kmeans(x, levels=2, codes=8, balanced=True, progress=False)
    for level in range(2):
        assert set(np.bincount(rq.codes[:, level], minlength=8).tolist()) <= {25, 26}


# -- collisions --------------------------------------------------------------------------------


def test_extra_level_numbers_colliding_items_in_item_order():
    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [5, 5]])
    assert extra_level(codes).tolist() == [[0, 1, 0], [0, 1, 1], [2, 3, 0], [0, 1, 2], [2, 3, 1], [5, 5, 0]]


def test_sinkhorn_decollide_finds_the_optimal_assignment_by_hand():
    # Prefix 0 holds a fixed item on code 1 and three items colliding on code 0, with last-level
    # residuals a=0.0, b=0.1, c=0.9 over codewords 0, 1, 2, 3. Free codes: 0, 2, 3. The cheapest
    # assignment (squared distances) is a->0, b->2, c->3 (cost 8.02); nearest-first greedy
    # would give a->0, c->2, b->3 (9.62). Prefix 1 is untouched.
    book = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    codes = np.array([[0, 1], [0, 0], [0, 0], [0, 0], [1, 0]])
    residual = np.array([[1.0], [0.0], [0.1], [0.9], [0.0]], dtype=np.float32)
    out = sinkhorn_decollide(codes, residual, book)
    assert out.tolist() == [[0, 1], [0, 0], [0, 2], [0, 3], [1, 0]]


def test_sinkhorn_decollide_makes_random_collisions_unique_and_keeps_unique_items():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(400, 3))
    residual = rng.normal(size=(400, 5)).astype(np.float32)
    book = rng.normal(size=(64, 5)).astype(np.float32)  # 64 last-level codes: more than any prefix holds
    codes[:, 2] = rng.integers(0, 64, size=400)
    before_unique = sid_stats(codes)["distinct_sids"]
    assert before_unique < 400
    out = sinkhorn_decollide(codes, residual, book)
    assert len(np.unique(out, axis=0)) == 400
    np.testing.assert_array_equal(out[:, :2], codes[:, :2])  # only the last level moves
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    unique_before = counts[inverse.reshape(-1)] == 1
    np.testing.assert_array_equal(out[unique_before], codes[unique_before])


def test_sinkhorn_decollide_refuses_a_prefix_larger_than_the_codebook():
    codes = np.zeros((5, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="holds 5 items but the last level has only 3 codes"):
        sinkhorn_decollide(codes, np.zeros((5, 1)), np.zeros((3, 1)))


@pytest.mark.parametrize("collisions,levels_out", [("extra_level", 3), ("sinkhorn", 2), ("none", 2)])
@pytest.mark.parametrize("balanced", [False, True])
def test_build_sid_index_handles_collisions(collisions, levels_out, balanced):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(150, 6))
    emb = np.concatenate([base, base[:30]])  # 30 exact duplicates must collide before handling
    index = build_sid_index(emb, levels=2, codes=[16, 32], balanced=balanced, collisions=collisions,
                            progress=False)
    report = index.report
    assert index.codes.shape == (180, levels_out)
    assert report["collision_rate_before"] >= 30 / 180 - 1e-9
    distinct = len(np.unique(index.codes, axis=0))
    if collisions == "none":
        assert distinct < 180 and report["collision_rate_after"] == report["collision_rate_before"]
    else:
        assert distinct == 180 and report["collision_rate_after"] == 0.0
    assert report["before"]["codes_used"] == [16, 32] and report["items"] == 180
    if balanced:
        assert set(np.bincount(index.codes[:, 0]).tolist()) <= {11, 12}


def test_build_sid_index_is_deterministic_for_a_seed():
    emb = np.random.default_rng(5).normal(size=(300, 8))
    a = build_sid_index(emb, levels=3, codes=16, collisions="sinkhorn", seed=7, progress=False)
    b = build_sid_index(emb, levels=3, codes=16, collisions="sinkhorn", seed=7, progress=False)
    np.testing.assert_array_equal(a.codes, b.codes)
    for x, y in zip(a.codebooks, b.codebooks):
        np.testing.assert_array_equal(x, y)
    c = build_sid_index(emb, levels=3, codes=16, collisions="sinkhorn", seed=8, progress=False)
    assert not np.array_equal(a.codes, c.codes)
    with pytest.raises(ValueError, match="collisions must be one of"):
        build_sid_index(emb, collisions="tiger")


def test_sid_stats_by_hand():
    s = sid_stats(np.array([[0, 1], [0, 1], [1, 0], [3, 0]]), codebook_sizes=[4, 2])
    assert s["distinct_sids"] == 3 and s["collision_rate"] == 0.25 and s["colliding_items"] == 2
    assert s["codes_used"] == [3, 2] and s["utilisation"] == [0.75, 1.0]
    assert s["max_items_per_sid"] == 2
    assert s["perplexity"][1] == 2.0  # codes 0 and 1 twice each: entropy log 2
    r = random_sids(1000, [4, 7], seed=0)
    assert r.shape == (1000, 2) and r[:, 0].max() == 3 and r[:, 1].max() == 6


# -- index files -------------------------------------------------------------------------------


def test_index_file_round_trip_report_and_lcrec_reader(tmp_path):
    emb = np.random.default_rng(2).normal(size=(40, 4))
    index = build_sid_index(emb, tmp_path / "lcrec" / "Tiny.index.json", levels=2, codes=4, progress=False)
    path = tmp_path / "lcrec" / "Tiny.index.json"
    text = json.loads(path.read_text())
    assert text["0"] == [f"<a_{index.codes[0, 0]}>", f"<b_{index.codes[0, 1]}>", f"<c_{index.codes[0, 2]}>"]
    np.testing.assert_array_equal(read_sid_index(path, 40), index.codes)
    report = json.loads(sid_report_path(path).read_text())
    assert report["collision_rate_after"] == 0.0 and report["items"] == 40
    assert not list((tmp_path / "lcrec").glob("*.tmp"))
    # The rest of an LC-Rec folder; recgym's own reader must take our index.
    (tmp_path / "lcrec" / "Tiny.inter.json").write_text(json.dumps({"0": [0, 1, 2, 3], "1": [4, 5, 6]}))
    (tmp_path / "lcrec" / "Tiny.item2id").write_text("".join(f"ASIN{i}\t{i}\n" for i in range(40)))
    ds = read_lcrec(tmp_path / "lcrec")
    np.testing.assert_array_equal(ds.catalogue.sids, index.codes)
    assert ds.catalogue.sid_string(5) == format_sid(index.codes[5])


def test_read_sid_index_errors_name_file_and_ids(tmp_path):
    path = write_sid_index(tmp_path / "x.index.json", np.array([[0, 1], [1, 0], [2, 2]]))
    with pytest.raises(ValueError, match=r"x.index.json.*1 missing \(e.g. \[3\]\)"):
        read_sid_index(path, 4)
    with pytest.raises(ValueError, match=r"1 outside the range \(e.g. \[2\]\)"):
        read_sid_index(path, 2)
    bad = tmp_path / "bad.json"
    bad.write_text('{"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<c_2>"]}')
    with pytest.raises(ValueError, match=r"bad.json, key '1'.*out of order"):
        read_sid_index(bad)
    bad.write_text('{"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}')
    with pytest.raises(ValueError, match=r"key '1': 1 SID levels, the first item has 2"):
        read_sid_index(bad)
    bad.write_text('{"1": ["<a_1>", " <b_2>"], "0": ["<a_3>", "<b_4>"]}')  # spaces, any key order
    assert read_sid_index(bad, 2).tolist() == [[3, 4], [1, 2]]
    bad.write_text('{"0": ["<a_1>"],')
    with pytest.raises(ValueError, match="bad.json.*invalid JSON"):
        read_sid_index(bad)
    with pytest.raises(FileNotFoundError, match="missing.json: SID index file not found"):
        read_sid_index(tmp_path / "missing.json")


# -- applying an index to a dataset and playing it ---------------------------------------------


def titles_only(num_items=60):
    ds = make_synthetic(num_items=num_items, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    cat = ds.catalogue
    return Dataset(ds.name, Catalogue(cat.num_items, titles=cat.titles), ds.train, ds.valid, ds.test,
                   users=ds.users, info=ds.info)


def test_with_sid_index_replaces_sids_and_checks_ids_and_titles(tmp_path):
    ds = titles_only()
    emb = np.random.default_rng(0).normal(size=(60, 5))
    path = tmp_path / "s.index.json"
    build_sid_index(emb, path, levels=2, codes=6, titles=ds.catalogue.titles, progress=False)
    new = with_sid_index(ds, path)
    np.testing.assert_array_equal(new.catalogue.sids, read_sid_index(path))
    assert new.catalogue.titles == ds.catalogue.titles and ds.catalogue.sids is None
    assert new.train is ds.train and new.info["sid_index"] == str(path)
    assert len(new.catalogue.sid_to_items) == 60
    other = make_synthetic(num_items=70, num_users=50, num_categories=4, clusters_per_category=3)
    with pytest.raises(ValueError, match="10 missing"):
        with_sid_index(other, path)
    renamed = Dataset(ds.name, Catalogue(60, titles=[t + "!" for t in ds.catalogue.titles]),
                      ds.train, ds.valid, ds.test)
    with pytest.raises(ValueError, match="built from other titles"):
        with_sid_index(renamed, path)
    assert with_sid_index(renamed, path, check_titles=False).catalogue.sids.shape == (60, 3)
    with pytest.raises(ValueError, match="shape"):
        with_sid_index(ds, np.zeros((59, 2), dtype=np.int64))


def test_env_plays_a_titles_only_dataset_with_our_sids(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    ds = titles_only()
    emb = np.random.default_rng(0).normal(size=(60, 5))
    path = tmp_path / "s.index.json"
    index = build_sid_index(emb, path, levels=2, codes=4, collisions="extra_level", progress=False)
    task = RecGenTask(with_sid_index(ds, path), split="train", representation="sid", vocab_size=400)
    assert task.representation == "sid"
    env = RecGenEnv(task)
    for row in (0, 5, 17):
        obs, info = env.reset(seed=0, options={"row": row})
        target = info["target"]
        assert task.items.item_text(target) == format_sid(index.codes[target])
        tokens = task.items.sequences[target]
        for t, token in enumerate(tokens.tolist()):
            assert info["action_mask"][token] == 1
            obs, reward, done, truncated, info = env.step(token)
            assert done == (t == len(tokens) - 1) and not truncated
        assert reward == 1.0 and info["hit"] and info["generated_items"].tolist() == [target]
    # A different item's path is a miss.
    obs, info = env.reset(seed=0, options={"row": 0})
    other = (info["target"] + 1) % 60
    for token in task.items.sequences[other].tolist():
        obs, reward, done, truncated, info = env.step(token)
    assert done and reward == 0.0 and not info["hit"]


def test_titles_fingerprint_separates_items():
    assert titles_fingerprint(["ab", "c"]) != titles_fingerprint(["a", "bc"])


def test_atomic_ids_give_every_item_its_own_single_token():
    """sid_index="atomic": item i is <a_i>, its path in the tree is one token then the end token."""
    ds = make_synthetic(num_items=30, num_users=20, num_categories=2, clusters_per_category=2, seed=0)
    task = RecGenTask(ds, split="train", representation="sid", vocab_size=400, sid_index="atomic")
    assert [task.dataset.catalogue.sid_string(i) for i in (0, 7, 29)] == ["<a_0>", "<a_7>", "<a_29>"]
    tok = task.items.tokenizer
    for item in (0, 7, 29):
        want = [tok.convert_tokens_to_ids(f"<a_{item}>"), task.items.eos_token_id]
        assert task.items.sequences[item].tolist() == want
    assert int(task.tree.num_children[task.tree.root]) == 30  # every item one step from the root
