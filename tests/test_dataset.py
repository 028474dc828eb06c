import numpy as np
import pytest

from recgym.data import (
    Catalogue,
    DataFormatError,
    Dataset,
    Examples,
    format_sid,
    parse_sid,
    sequence_windows,
    temporal_split,
)


def small_dataset() -> Dataset:
    cat = Catalogue(4, titles=["A", "B", "A", "Ü tab\there"], sids=[[0, 1], [0, 2], [0, 1], [1, 0]],
                    keys=["k0", "k1", "k2", "k3"])
    train = Examples.from_lists([[0], [0, 1], [2, 1, 0]], [1, 2, 3], max_history=2,
                                users=[0, 0, 1], timestamps=[10, 20, 30])
    valid = Examples.from_lists([[1]], [0], max_history=2)
    return Dataset("tiny", cat, train, valid, Examples.empty(2), users=["u0", "u1"], info={"x": [1]})


def test_catalogue_maps_repeated_titles_and_sids_to_item_sets():
    cat = small_dataset().catalogue
    assert cat.title_to_items["A"].tolist() == [0, 2]
    assert cat.sid_to_items[(0, 1)].tolist() == [0, 2]
    assert cat.sid_string(3) == "<a_1><b_0>"


def test_catalogue_rejects_inconsistent_lengths():
    with pytest.raises(ValueError, match="2 titles for 3 items"):
        Catalogue(3, titles=["a", "b"])
    with pytest.raises(ValueError, match="sids must have shape"):
        Catalogue(2, sids=[[1, 2, 3]])


def test_from_lists_keeps_the_newest_items_left_aligned():
    ex = Examples.from_lists([[1, 2, 3, 4], [], [7]], [5, 6, 8], max_history=3)
    assert ex.history.tolist() == [[2, 3, 4], [-1, -1, -1], [7, -1, -1]]
    assert ex.history_len.tolist() == [3, 0, 1]
    assert ex.histories() == [[2, 3, 4], [], [7]]
    assert ex.user.tolist() == [-1, -1, -1] and ex.timestamp.tolist() == [-1, -1, -1]


def test_sequence_windows_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 15, 50)
    items = rng.integers(0, 100, lengths.sum())
    starts = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    positions = np.flatnonzero(np.arange(len(items)) > starts)
    hist, n = sequence_windows(items, starts[positions], positions, 4)
    for row, p in enumerate(positions):
        expect = items[max(starts[p], p - 4):p].tolist()
        assert hist[row, : n[row]].tolist() == expect
        assert (hist[row, n[row]:] == -1).all()


def test_subset_concat_and_temporal_split():
    ex = small_dataset().train
    assert len(Examples.concat([ex, ex.subset(slice(1, 3))])) == 5
    assert temporal_split(100) == (slice(0, 80), slice(80, 90), slice(90, 100))


def test_sid_parsing_round_trips_and_rejects_garbage():
    assert parse_sid(["<a_3>", "<b_17>"]) == (3, 17)
    assert format_sid(parse_sid("<a_1><b_2><c_3>")) == "<a_1><b_2><c_3>"
    for bad in ("<b_1><a_2>", "a_1", "<a_1>x", ""):
        with pytest.raises(ValueError):
            parse_sid(bad)


def test_save_and_load_round_trip(tmp_path):
    ds = small_dataset()
    path = ds.save(tmp_path / "sub" / "tiny.npz")
    assert [p.name for p in path.parent.iterdir()] == ["tiny.npz"]  # no temporary left behind
    back = Dataset.load(path)
    assert back.name == "tiny" and back.info == {"x": [1]} and back.users == ["u0", "u1"]
    assert back.catalogue.titles == ds.catalogue.titles and back.catalogue.keys == ds.catalogue.keys
    np.testing.assert_array_equal(back.catalogue.sids, ds.catalogue.sids)
    for split in ("train", "valid", "test"):
        for field in ("user", "history", "history_len", "target", "timestamp"):
            np.testing.assert_array_equal(getattr(back.split(split), field), getattr(ds.split(split), field))


def test_load_of_a_damaged_cache_names_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="bad.npz"):
        Dataset.load(bad)


@pytest.mark.parametrize("damage", ["empty", "truncated", "no_meta", "wrong_lengths"])
def test_every_damaged_cache_is_a_data_format_error(tmp_path, damage):
    """Dataset.load turns any damage into DataFormatError (caches rebuild on that one exception)."""
    path = small_dataset().save(tmp_path / "tiny.npz")
    whole = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")  # np.load: EOFError
    elif damage == "truncated":
        path.write_bytes(whole[: len(whole) // 2])  # np.load: zipfile.BadZipFile
    else:
        with np.load(path) as z:
            arrays = dict(z)
        if damage == "no_meta":
            del arrays["meta"]
        else:
            arrays["train.user"] = arrays["train.user"][:1]
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    with pytest.raises(DataFormatError, match=r"tiny.npz: not a readable recgym cache"):
        Dataset.load(path)


def test_validate_names_split_and_row():
    ds = small_dataset()
    ds.validate()
    ds.train.target[1] = 9
    with pytest.raises(ValueError, match="train row 1 has target 9"):
        ds.validate()


def test_describe_counts():
    d = small_dataset().describe()
    assert d["items"] == 4 and d["titles"] == 3 and d["sids"] == 3 and d["users"] == 2
    assert d["splits"]["train"]["examples"] == 3 and d["splits"]["train"]["users"] == 2
    assert d["splits"]["test"]["examples"] == 0
    assert d["target_popularity"]["items_never_a_target"] == 0


def test_data_format_error_message():
    err = DataFormatError("f.csv", "boom", line=3)
    assert str(err) == "f.csv, line 3: boom" and err.line == 3
    assert str(DataFormatError("f.json", "missing", key="7")) == "f.json, key '7': missing"
