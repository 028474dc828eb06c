import numpy as np
import pytest

from recgym.data import DataFormatError, available, load, registry


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
