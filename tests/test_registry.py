import gzip
import json

import numpy as np
import pytest

from recgym.data import DataFormatError, DataWarning, available, load, registry


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RECGYM_DATA_PATH", raising=False)


def write_lcrec(folder):
    folder.mkdir(parents=True)
    (folder / "Toy.inter.json").write_text('{"0": [0, 1, 2, 3], "1": [2, 1, 0]}')
    (folder / "Toy.item2id").write_text("A\t0\nB\t1\nC\t2\nD\t3\n")
    (folder / "Toy.index.json").write_text(
        '{"0": ["<a_0>", "<b_0>"], "1": ["<a_0>", "<b_1>"], "2": ["<a_1>", "<b_0>"], "3": ["<a_1>", "<b_1>"]}'
    )
    return folder


def test_synthetic_by_name_passes_options():
    ds = load("synthetic", num_items=300, num_users=100, max_history=5)
    assert ds.catalogue.num_items == 300 and ds.max_history == 5


def test_folder_is_read_once_then_cached(tmp_path):
    folder = write_lcrec(tmp_path / "toy")
    first = load(folder)
    cached = list((tmp_path / "cache" / "processed").glob("toy-lcrec-*.npz"))
    assert len(cached) == 1
    second = load(folder)
    np.testing.assert_array_equal(first.test.target, second.test.target)
    assert second.catalogue.keys == ["A", "B", "C", "D"]
    # Changing a file changes the cache key: the folder is read again.
    (folder / "Toy.inter.json").write_text('{"0": [0, 1, 2, 3, 1], "1": [2, 1, 0]}')
    third = load(folder)
    assert third.test.target.tolist() == [1, 0]
    assert len(list((tmp_path / "cache" / "processed").glob("toy-lcrec-*.npz"))) == 2


def test_damaged_cache_is_rebuilt(tmp_path):
    folder = write_lcrec(tmp_path / "toy")
    load(folder)
    (cache,) = (tmp_path / "cache" / "processed").glob("*.npz")
    cache.write_bytes(b"garbage")
    assert load(folder).catalogue.num_items == 4


def test_prepared_folder_found_on_the_search_path(tmp_path, monkeypatch):
    write_lcrec(tmp_path / "shared" / "games-lcrec")
    monkeypatch.setenv("RECGYM_DATA_PATH", str(tmp_path / "shared"))
    ds = load("games-lcrec")
    assert ds.name == "games-lcrec" and ds.catalogue.num_items == 4


def test_missing_prepared_folder_says_where_to_put_it():
    with pytest.raises(FileNotFoundError, match="RECGYM_DATA_PATH"):
        load("office-d3")


def test_unknown_name_lists_the_names():
    with pytest.raises(FileNotFoundError, match="synthetic"):
        load("no-such-dataset")


def test_bad_folder_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty"):
        load(tmp_path / "empty")


def test_available_lists_every_kind():
    names = available()
    for name in ("synthetic", "games", "toys", "goodreads", "games-lcrec", "office-d3"):
        assert name in names
    assert registry.search_path()[0] == registry.data_dir()


def test_real_games_lcrec_loads_and_caches(shared_data, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_PATH", str(shared_data))
    first = load("games-lcrec")
    second = load("games-lcrec")
    assert len(second.train) == len(first.train) == 301_351
    assert second.catalogue.sids.shape == (16_859, 4)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_or_truncated_cache_is_rebuilt(tmp_path, damage):
    folder = write_lcrec(tmp_path / "toy")
    first = load(folder)
    (cache,) = (tmp_path / "cache" / "processed").glob("*.npz")
    whole = cache.read_bytes()
    cache.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 2])
    with pytest.warns(DataWarning, match="rebuilding a damaged or outdated cache: .*not a readable "):
        again = load(folder)
    assert again.test.target.tolist() == first.test.target.tolist()
    assert len(cache.read_bytes()) == len(whole)  # rewritten whole (zip timestamps may differ)
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no temporary left


def test_unknown_options_name_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option 'bogus' for dataset 'synthetic'; known options: "
                                         r".*num_items, num_users.*seed"):
        load("synthetic", bogus=1)
    folder = write_lcrec(tmp_path / "toy")
    with pytest.raises(ValueError, match=r"unknown option 'seed' for the lcrec reader of .*toy; "
                                         r"known options: name$"):
        load(folder, seed=3)
    with pytest.raises(ValueError, match=r"unknown option 'category' for dataset 'goodreads' \(goodreads raw "
                                         r"pipeline\); known options: .*genre.*min_items"):
        load("goodreads", category="poetry")


def test_raw_names_dispatch_through_the_source_table(monkeypatch):
    monkeypatch.setitem(registry.RAW_PIPELINES, "movies", ("movielens", "ml-1m"))
    with pytest.raises(ValueError, match="unknown raw source 'movielens'; known sources: amazon, goodreads"):
        load("movies")
    with pytest.raises(ValueError, match="unknown Goodreads genre 'sci-fi'"):
        load("goodreads", genre="sci-fi")


def write_amazon(folder, category):
    folder.mkdir(parents=True)
    reviews = [{"reviewerID": f"U{u}", "asin": f"B{(u + i) % 4}", "unixReviewTime": 1_500_000_000 + 86400 * i}
               for u in range(4) for i in range(3)]
    with gzip.open(folder / f"{category}_5.json.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in reviews)
    with gzip.open(folder / f"meta_{category}.json.gz", "wt") as fh:
        fh.writelines(json.dumps({"asin": f"B{i}", "title": f"Item {i}"}) + "\n" for i in range(4))


def test_raw_pipeline_options_reach_prepare_raw(tmp_path):
    write_amazon(tmp_path / "raw", "Toys_and_Games")
    opts = {"raw_dir": tmp_path / "raw", "min_items": 1, "k": 1, "end": "2017-07"}
    with pytest.warns(DataWarning, match="used unverified"):
        ds = load("toys", cache=False, max_history=2, progress=False, **opts)
    assert ds.name == "amazon-Toys_and_Games" and ds.catalogue.titles == [f"Item {i}" for i in range(4)]
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 4 * 2 and ds.max_history == 2
    assert not (tmp_path / "cache" / "processed").exists()  # cache=False reaches the pipeline
    write_amazon(tmp_path / "raw2", "Video_Games")
    with pytest.warns(DataWarning):
        games = load("toys", category="Video_Games", progress=False, **{**opts, "raw_dir": tmp_path / "raw2"})
    assert games.name == "amazon-Video_Games"
    assert len(list((tmp_path / "cache" / "processed").glob("amazon-Video_Games-h10-*.npz"))) == 1
