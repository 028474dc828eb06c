"""Tests for recgym.data.readers: tiny hand-written folders, then the real shared data."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from recgym.data import DataFormatError, DataWarning, Examples
from recgym.data.readers import D3_COLUMNS, detect_format, read_d3, read_folder, read_lcrec, read_sprec

# -- tiny D3 folders ---------------------------------------------------------------------------

TITLES = ["Pen", "Paper\twith a tab", "Pen", "Stapler", "Ink"]


def d3_row(user: str, history: list[int], target: int, ts: int, titles: list[str] = TITLES) -> list[str]:
    n = len(history)
    return [
        user, repr([f"ASIN{i}" for i in history]), f"ASIN{target}", repr(history), str(target),
        repr([titles[i] for i in history]), titles[target], repr([5.0] * n), "4.0",
        repr([ts - 86400 * (n - k) for k in range(n)]), str(ts),
    ]


def write_csv(path: Path, rows: list[list[str]], header: list[str] | tuple[str, ...] = D3_COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # like the published files
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode())
    return path


def write_info(path: Path, titles: list[str] = TITLES, newline: str = "\n", final: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = newline.join(f"{t}\t{i}" for i, t in enumerate(titles)) + (newline if final else "")
    path.write_bytes(text.encode())
    return path


VALID_ROWS = [d3_row("u1", [0], 1, 1_000_000), d3_row("u2", [1, 2, 3, 4], 0, 1_100_000)]
TEST_ROWS = [d3_row("u1", [0, 1], 3, 1_200_000), d3_row("u3", [4], 2, 1_300_000)]


def make_d3(root: Path, valid: list[list[str]] = VALID_ROWS, test: list[list[str]] = TEST_ROWS) -> Path:
    write_info(root / "info" / "Cat.txt", newline="\r\n", final=False)
    write_csv(root / "valid" / "Cat.csv", valid)
    write_csv(root / "test" / "Cat.csv", test)
    return root


def test_d3_valid_and_test_only(tmp_path: Path) -> None:
    ds = read_d3(make_d3(tmp_path / "tiny"), max_history=3)
    assert ds.name == "tiny"
    assert ds.catalogue.titles == TITLES  # CRLF, no final newline, a title with a TAB
    assert ds.catalogue.keys is None
    assert ds.catalogue.title_to_items["Pen"].tolist() == [0, 2]
    assert len(ds.train) == 0 and ds.train.max_history == 3
    assert ds.valid.histories() == [[0], [2, 3, 4]]  # newest 3 of [1, 2, 3, 4]
    assert ds.valid.target.tolist() == [1, 0]
    assert ds.test.histories() == [[0, 1], [4]]
    assert ds.test.timestamp.tolist() == [1_200_000, 1_300_000]
    assert ds.users == ["u1", "u2", "u3"]
    assert ds.valid.user.tolist() == [0, 1] and ds.test.user.tolist() == [0, 2]
    assert ds.info["format"] == "d3" and ds.info["source"] == str(tmp_path / "tiny")
    assert "8:1:1" in ds.info["split"]
    ds.validate()


def test_d3_flat_folder_with_train(tmp_path: Path) -> None:
    write_info(tmp_path / "items.txt")
    write_csv(tmp_path / "train.csv", [d3_row("u9", [3], 4, 10)])
    write_csv(tmp_path / "valid.csv", VALID_ROWS)
    write_csv(tmp_path / "test.csv", TEST_ROWS)
    assert detect_format(tmp_path) == "d3"
    ds = read_folder(tmp_path, name="flat")
    assert ds.name == "flat"
    assert len(ds.train) == 1 and ds.users[0] == "u9"
    assert ds.train.histories() == [[3]] and ds.train.target.tolist() == [4]


def test_d3_title_mismatch_is_not_an_error(tmp_path: Path) -> None:
    row = d3_row("u1", [0], 1, 5)
    row[6] = "Some other title"
    ds = read_d3(make_d3(tmp_path, test=[row]))
    assert ds.test.target.tolist() == [1]


def test_d3_missing_column(tmp_path: Path) -> None:
    make_d3(tmp_path)
    header = [c for c in D3_COLUMNS if c != "timestamp"]
    path = write_csv(tmp_path / "test" / "Cat.csv", [r[:-1] for r in TEST_ROWS], header=header)
    with pytest.raises(DataFormatError, match="missing column.*timestamp") as err:
        read_d3(tmp_path)
    assert str(path) in str(err.value)


def test_d3_bad_literal_gives_csv_line(tmp_path: Path) -> None:
    bad = d3_row("u5", [0], 1, 7)
    bad[3] = "[0, oops]"
    multiline = d3_row("u4", [1], 0, 6, titles=["Pen\nnewline", *TITLES[1:]])  # item_title: 2 lines
    path = make_d3(tmp_path, test=[TEST_ROWS[0], multiline, bad]) / "test" / "Cat.csv"
    # header = line 1, row 1 = line 2, the multi-line row = lines 3-4, the bad row = line 5
    with pytest.raises(DataFormatError, match=r"line 5: .*history_item_id") as err:
        read_d3(tmp_path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[:-1], "expected 11 columns, got 10"),
        (lambda r: [*r[:9], "[1, 2, 3]", r[10]], "different lengths"),
        (lambda r: [*r[:3], "[0, 5]", *r[4:]], "item id 5 outside the catalogue 0..4"),
        (lambda r: [*r[:4], "-1", *r[5:]], "item id -1 outside"),
        (lambda r: [*r[:4], "x", *r[5:]], "item_id is not an integer"),
        (lambda r: [*r[:3], "5", *r[4:]], "history_item_id is not a list"),
    ],
)
def test_d3_malformed_row(tmp_path: Path, edit, message: str) -> None:
    make_d3(tmp_path, valid=[VALID_ROWS[0], edit(d3_row("u1", [0, 1], 2, 9))])
    with pytest.raises(DataFormatError, match=f"Cat.csv, line 3: .*{message}"):
        read_d3(tmp_path)


def test_d3_empty_and_header_only_files(tmp_path: Path) -> None:
    make_d3(tmp_path)
    (tmp_path / "test" / "Cat.csv").write_bytes(b"")
    with pytest.raises(DataFormatError, match="Cat.csv: empty file"):
        read_d3(tmp_path)
    write_csv(tmp_path / "test" / "Cat.csv", [])
    with pytest.raises(DataFormatError, match="Cat.csv: no data rows"):
        read_d3(tmp_path)


def test_d3_missing_info_and_splits(tmp_path: Path) -> None:
    write_csv(tmp_path / "valid" / "Cat.csv", VALID_ROWS)
    write_csv(tmp_path / "test" / "Cat.csv", TEST_ROWS)
    with pytest.raises(DataFormatError, match=f"^{tmp_path}: no item catalogue"):
        read_d3(tmp_path)
    write_info(tmp_path / "info" / "Cat.txt")
    (tmp_path / "valid" / "Cat.csv").unlink()
    with pytest.raises(DataFormatError, match="no valid CSV"):
        read_d3(tmp_path)


def test_d3_bad_info_lines(tmp_path: Path) -> None:
    make_d3(tmp_path)
    info = tmp_path / "info" / "Cat.txt"
    info.write_text("Pen\t0\nPaper\t2\n")
    with pytest.raises(DataFormatError, match="Cat.txt, line 2: expected index 1"):
        read_d3(tmp_path)
    info.write_text("Pen\t0\nno tab here\n")
    with pytest.raises(DataFormatError, match="Cat.txt, line 2: expected '<title><TAB><index>'"):
        read_d3(tmp_path)
    info.write_text("")
    with pytest.raises(DataFormatError, match="Cat.txt: empty title file"):
        read_d3(tmp_path)


# -- tiny LC-Rec folders -----------------------------------------------------------------------


def make_lcrec(root: Path, inter: dict[str, list], num_items: int, user2id: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "T.inter.json").write_text(json.dumps(inter))
    (root / "T.item2id").write_text("".join(f"ASIN{i}\t{i}\n" for i in range(num_items)))
    sids = {str(i): [f"<a_{i % 3}>", f"<b_{i}>"] for i in reversed(range(num_items))}
    (root / "T.index.json").write_text(json.dumps(sids))
    if user2id:
        users = sorted(int(k) for k in inter)
        (root / "T.user2id").write_text("".join(f"U{u}\t{u}\n" for u in range(max(users) + 1)))
    return root


def naive_leave_one_out(seqs: list[list[int]], max_history: int) -> dict[str, list]:
    out: dict[str, list] = {"train": [], "valid": [], "test": []}
    for u, s in enumerate(seqs):
        n = len(s)
        for p in range(1, n - 2):
            out["train"].append((u, s[max(0, p - max_history):p], s[p]))
        if n >= 3:
            out["valid"].append((u, s[max(0, n - 2 - max_history):n - 2], s[n - 2]))
        if n >= 2:
            out["test"].append((u, s[max(0, n - 1 - max_history):n - 1], s[n - 1]))
    return out


def as_tuples(ex: Examples) -> list:
    return list(zip(ex.user.tolist(), ex.histories(), ex.target.tolist(), strict=True))


def test_lcrec_matches_naive_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 40, size=n).tolist() for n in [6, 1, 2, 3, 4, 12, 5, 9]]
    # keys out of order in the file: examples must come out sorted by user idx
    inter = {str(u): seqs[u] for u in [3, 0, 7, 1, 2, 5, 4, 6]}
    ds = read_lcrec(make_lcrec(tmp_path / "t", inter, 40), max_history=3)
    expected = naive_leave_one_out(seqs, 3)
    for split in ("train", "valid", "test"):
        assert as_tuples(ds.split(split)) == expected[split], split
        assert (ds.split(split).timestamp == -1).all()
    assert ds.users == [f"U{u}" for u in range(8)]
    assert ds.catalogue.keys == [f"ASIN{i}" for i in range(40)]
    assert ds.catalogue.sids.tolist()[5] == [2, 5]
    assert ds.catalogue.titles is None
    assert ds.info["format"] == "lcrec" and ds.info["interactions"] == sum(map(len, seqs))
    ds.validate()


def test_lcrec_without_user2id_with_titles(tmp_path: Path) -> None:
    root = make_lcrec(tmp_path, {"10": [0, 1, 2, 3], "2": [3, 2, 1]}, 4, user2id=False)
    (root / "T.item.json").write_text(json.dumps({str(i): {"title": f"Item {i}"} for i in range(4)}))
    assert detect_format(root) == "lcrec"
    ds = read_folder(root)
    assert ds.users == ["2", "10"]
    assert ds.test.user.tolist() == [0, 1] and ds.test.target.tolist() == [1, 3]
    assert ds.catalogue.titles == ["Item 0", "Item 1", "Item 2", "Item 3"]


def test_lcrec_broken_json(tmp_path: Path) -> None:
    root = make_lcrec(tmp_path, {"0": [0, 1, 2]}, 3)
    (root / "T.inter.json").write_text('{"0": [0, 1, 2],\n "1": [0, 1,, 2]}')
    with pytest.raises(DataFormatError, match=r"T.inter.json, line 2: invalid JSON: .*column 13"):
        read_lcrec(root)


def test_lcrec_unknown_item_names_user(tmp_path: Path) -> None:
    root = make_lcrec(tmp_path, {"0": [0, 1, 2], "1": [2, 7, 1]}, 3)
    with pytest.raises(DataFormatError, match=r"T.inter.json, key '1': unknown item id 7") as err:
        read_lcrec(root)
    assert str(root / "T.inter.json") in str(err.value)


def test_lcrec_empty_inter(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"T.inter.json: no user sequences"):
        read_lcrec(make_lcrec(tmp_path, {}, 3, user2id=False))


def test_lcrec_non_integer_item(tmp_path: Path) -> None:
    root = make_lcrec(tmp_path, {"0": [0, 1, 2], "1": [2, 1.5, 1]}, 3)
    with pytest.raises(DataFormatError, match=r"key '1': item ids must be integers"):
        read_lcrec(root)


def test_lcrec_bad_item2id_and_index(tmp_path: Path) -> None:
    root = make_lcrec(tmp_path, {"0": [0, 1, 2]}, 3)
    (root / "T.item2id").write_text("A\t0\nB\t2\nC\t1\n")
    with pytest.raises(DataFormatError, match=r"T.item2id, line 2: expected index 1"):
        read_lcrec(root)
    root = make_lcrec(tmp_path / "b", {"0": [0, 1, 2]}, 3)
    (root / "T.index.json").write_text(json.dumps({"0": ["<a_1>"], "2": ["<a_2>"]}))
    with pytest.raises(DataFormatError, match=r"T.index.json, key '1': item has no semantic ID"):
        read_lcrec(root)
    (root / "T.index.json").write_text(json.dumps({"0": ["<a_1>"], "1": ["<b_1>"], "2": ["<a_2>"]}))
    with pytest.raises(DataFormatError, match=r"T.index.json, key '1': semantic ID levels out of order"):
        read_lcrec(root)
    (root / "T.index.json").write_text(json.dumps({"0": ["<a_1>"], "1": "<a_1><b_2>", "2": ["<a_2>"]}))
    with pytest.raises(DataFormatError, match=r"T.index.json, key '1': 2 SID levels, item 0 has 1"):
        read_lcrec(root)
    (root / "T.index.json").unlink()
    with pytest.raises(DataFormatError, match=r"T.index.json: missing"):
        read_lcrec(root)


def test_lcrec_index_only_folder_like_letter_and_tiger(tmp_path: Path) -> None:
    """No T.item2id (LETTER / TIGER releases): item ids are the index keys, keys are unknown."""
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, 12, size=n).tolist() for n in [4, 3, 7]]
    root = make_lcrec(tmp_path / "t", {str(u): s for u, s in enumerate(seqs)}, 12, user2id=False)
    (root / "T.item2id").unlink()
    assert detect_format(root) == "lcrec"
    ds = read_lcrec(root, max_history=2)
    assert ds.catalogue.num_items == 12 and ds.catalogue.keys is None
    assert ds.catalogue.sids.tolist()[7] == [1, 7]  # "<a_{i % 3}>", "<b_{i}>"
    expected = naive_leave_one_out(seqs, 2)
    for split in ("train", "valid", "test"):
        assert as_tuples(ds.split(split)) == expected[split], split
    # without item2id, the index keys themselves must be 0..N-1
    (root / "T.index.json").write_text(json.dumps({"0": ["<a_0>"], "1": ["<a_1>"], "5": ["<a_2>"]}))
    with pytest.raises(DataFormatError, match=r"T.index.json, key '5': item idx outside 0..2 "
                                              r"\(without T.item2id the index keys must be 0..2\)"):
        read_lcrec(root)
    (root / "T.index.json").write_text("{}")
    with pytest.raises(DataFormatError, match=r"T.index.json: no items"):
        read_lcrec(root)


def test_lcrec_duplicate_asin_is_an_error(tmp_path: Path) -> None:
    root = make_lcrec(tmp_path, {"0": [0, 1, 2]}, 3)
    (root / "T.item2id").write_text("B01\t0\nB02\t1\nB01\t2\n")
    with pytest.raises(DataFormatError, match=r"T.item2id, line 3: ASIN 'B01' appears twice "
                                              r"\(lines 1 and 3\)"):
        read_lcrec(root)
    (root / "T.item2id").write_text("B01\t0\nB02\t1\nB03\t2\n")
    (root / "T.user2id").write_text("U\t0\nU\t1\n")
    with pytest.raises(DataFormatError, match=r"T.user2id, line 2: user 'U' appears twice"):
        read_lcrec(root)


# -- tiny SPRec folders ------------------------------------------------------------------------

BOOKS = ['A Child Called "It" (Dave Pelzer #1)', "Dune", "Emma", "Heat, Dust", "Persuasion",
         'Say "Hi", "Bye"']


def sprec_record(history: list[str], target: str) -> dict[str, str]:
    titles = ", ".join(f'"{t}"' for t in history)
    return {
        "instruction": "Given a list of books the user recently enjoys, please recommend a new books",
        "input": f"The user has played the following books before: {titles}, please write a new books "
                 "that the user may bought",
        "output": f'"{target}"\n',
    }


def make_sprec(root: Path, records: list[dict], name2id: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps(records))
    (root / "id2name.json").write_text(json.dumps({str(i): t for i, t in enumerate(BOOKS)}))
    if name2id:
        (root / "name2id.json").write_text(json.dumps({t: i for i, t in enumerate(BOOKS)}))
    return root


@pytest.mark.parametrize("name2id", [True, False])
def test_sprec_titles_and_split(tmp_path: Path, name2id: bool) -> None:
    records = [sprec_record([BOOKS[0], "It", "Dune", "Heat, Dust", BOOKS[5]], "Emma")] + [
        sprec_record(["Emma", BOOKS[(k % 4) + 1]], BOOKS[k % 5]) for k in range(19)
    ]
    root = make_sprec(tmp_path, records, name2id=name2id)
    assert detect_format(root) == "sprec"
    ds = read_sprec(root, seed=1)
    assert ds.info["dropped_history_titles"] == 1
    assert ds.users is None
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (16, 2, 2)
    order = np.random.default_rng(1).permutation(20)
    all_rows = Examples.concat([ds.train, ds.valid, ds.test])
    first = int(np.flatnonzero(order == 0)[0])
    # the title with "It" in quotes is kept, the unknown "It" dropped, 'Say "Hi", "Bye"' not split
    assert all_rows.histories()[first] == [0, 1, 3, 5]
    assert all_rows.target[first] == 2
    assert (all_rows.user == -1).all() and (all_rows.timestamp == -1).all()
    again = read_sprec(root, seed=1)
    assert as_tuples(again.test) == as_tuples(ds.test)
    other = read_sprec(root, seed=2)
    assert as_tuples(other.train) != as_tuples(ds.train)


def test_sprec_unknown_target(tmp_path: Path) -> None:
    root = make_sprec(tmp_path, [sprec_record(["Dune"], "Emma"), sprec_record(["Dune"], "It")])
    with pytest.raises(DataFormatError, match=r"train.json, key 1: target title 'It'"):
        read_sprec(root)


def test_sprec_bad_input_text(tmp_path: Path) -> None:
    root = make_sprec(tmp_path, [{"instruction": "", "input": "nothing here", "output": '"Dune"\n'}])
    with pytest.raises(DataFormatError, match=r"train.json, key 0: input is not"):
        read_sprec(root)


def test_sprec_records_without_any_known_history_title(tmp_path: Path) -> None:
    """A record whose history titles are all unknown is left out, counted and warned about;
    when no record is left, it is an error."""
    records = [sprec_record(["Dune"], "Emma"), sprec_record(["It", "Nope"], "Dune"),
               sprec_record(["Emma", "It"], "Dune"), sprec_record(["Unknown"], "Emma")]
    root = make_sprec(tmp_path / "some", records * 5)
    with pytest.warns(DataWarning, match=r"train.json: 10 of 20 records left out because none of their "
                                         r"history titles is in the catalogue"):
        ds = read_sprec(root)
    assert ds.info["dropped_records"] == 10 and ds.info["dropped_history_titles"] == 5 * (2 + 1 + 1)
    every = Examples.concat([ds.train, ds.valid, ds.test])
    assert len(every) == 10 and every.history_len.min() == 1
    assert sorted(every.histories()) == [[1]] * 5 + [[2]] * 5
    root = make_sprec(tmp_path / "none", [sprec_record(["It"], "Dune"), sprec_record(["Nope"], "Emma")])
    with pytest.raises(DataFormatError, match=r"train.json: all 2 records lost their whole history"):
        read_sprec(root)


# -- detection ---------------------------------------------------------------------------------


def test_detect_format_unknown(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(DataFormatError, match=r"unknown data format: looked for \*.inter.json"):
        detect_format(tmp_path)
    with pytest.raises(DataFormatError, match="not a folder"):
        detect_format(tmp_path / "nope")
    with pytest.raises(ValueError, match="format must be one of"):
        read_folder(tmp_path, format="csv")
    with pytest.raises(ValueError, match="max_history"):
        read_d3(tmp_path, max_history=0)


# -- real shared data --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def games(shared_data: Path):
    start = time.perf_counter()
    ds = read_lcrec(shared_data / "games-lcrec")
    return ds, time.perf_counter() - start


def test_games_lcrec_counts(games, capsys) -> None:
    ds, seconds = games
    with capsys.disabled():
        print(f"\nread_lcrec(games-lcrec): {seconds:.3f} s")
    cat = ds.catalogue
    assert detect_format(ds.info["source"]) == "lcrec"
    assert len(ds.users) == 50_546 and ds.users[0] == "A31160I7G2EZVN"
    assert cat.num_items == 16_859 and cat.keys[0] == "B00L59D9HG"
    assert cat.sids.shape == (16_859, 4) and len(cat.sid_to_items) == 16_717
    assert [np.unique(level).size for level in cat.sids.T] == [208, 256, 256, 256]
    assert cat.sids[0].tolist() == [240, 118, 21, 18]
    assert ds.info["interactions"] == 452_989
    assert len(ds.test) == len(ds.valid) == 50_546
    assert len(ds.train) == 452_989 - 3 * 50_546 == 301_351
    for split in ("train", "valid", "test"):
        assert (np.diff(ds.split(split).user) >= 0).all()  # sorted by user
    ds.validate()


def test_games_lcrec_user_zero(games) -> None:
    ds, _ = games
    # user "0" has items [0, 1, 2, 3, 4, 5]
    assert ds.test.user[0] == 0 and ds.test.histories()[0] == [0, 1, 2, 3, 4] and ds.test.target[0] == 5
    assert ds.valid.user[0] == 0 and ds.valid.histories()[0] == [0, 1, 2, 3] and ds.valid.target[0] == 4
    train0 = ds.train.subset(ds.train.user == 0)
    assert train0.target.tolist() == [1, 2, 3]
    assert train0.histories() == [[0], [0, 1], [0, 1, 2]]


def test_games_lcrec_matches_naive_on_first_users(games, shared_data: Path) -> None:
    ds, _ = games
    inter = json.loads((shared_data / "games-lcrec" / "Games.inter.json").read_text())
    seqs = [inter[str(u)] for u in range(500)]
    expected = naive_leave_one_out(seqs, 10)
    for split in ("train", "valid", "test"):
        ex = ds.split(split)
        assert as_tuples(ex.subset(ex.user < 500)) == expected[split]


def utc_date(ts: int) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).date().isoformat()


@pytest.mark.parametrize(
    ("folder", "items", "titles", "rows", "users", "dates"),
    [
        ("office-d3", 3_459, 3_443, {"valid": 4_866, "test": 4_866}, {"valid": 1_795, "test": 2_024},
         {"valid": ("2018-02-03", "2018-04-02"), "test": ("2018-04-02", "2018-10-02")}),
        ("industrial-d3", 3_686, 3_646, {"valid": 4_532, "test": 4_533}, {"valid": 2_011, "test": 1_987},
         {"valid": ("2017-05-19", "2017-11-19"), "test": ("2017-11-19", "2018-09-28")}),
    ],
)
def test_d3_real_counts(shared_data: Path, folder, items, titles, rows, users, dates) -> None:
    ds = read_folder(shared_data / folder)
    assert ds.info["format"] == "d3" and ds.name == folder
    assert ds.catalogue.num_items == items and len(ds.catalogue.title_to_items) == titles
    assert len(ds.train) == 0
    described = ds.describe()["splits"]
    for split in ("valid", "test"):
        ex = ds.split(split)
        assert len(ex) == rows[split]
        assert described[split]["users"] == users[split]
        assert (utc_date(ex.timestamp.min()), utc_date(ex.timestamp.max())) == dates[split]
        assert (np.diff(ex.timestamp) >= 0).all()  # D3 rows are sorted by target time
        assert 1 <= ex.history_len.min() and ex.history_len.max() == 10
    ds.validate()


def test_d3_real_spot_checks(shared_data: Path) -> None:
    office = read_d3(shared_data / "office-d3")
    assert office.catalogue.titles[1116] == (
        "HP 74 Black & 75 Tri-color Original Ink Cartridges, 2 Cartridges (CB335WN, CB337WN)")
    assert office.catalogue.titles[0].startswith("Avery Printable Business Cards")
    # the README's example row is valid row 1 (CSV line 3)
    assert office.users[office.valid.user[1]] == "AEI8RBVD9S3SL"
    assert office.valid.histories()[1] == [516] and office.valid.target[1] == 1399
    industrial = read_d3(shared_data / "industrial-d3")
    assert industrial.users[industrial.test.user[0]] == "A2PTKIA26CX1NY"
    assert industrial.test.target[0] == 975
    assert industrial.catalogue.titles[975].startswith("3D Solutech Real Orange 1.75mm ABS")


def test_sprec_real(shared_data: Path) -> None:
    ds = read_folder(shared_data / "goodreads-sprec")
    assert ds.info["format"] == "sprec"
    assert ds.catalogue.num_items == 4_058 and len(ds.catalogue.title_to_items) == 4_058
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (4_000, 500, 500)
    assert ds.info["dropped_history_titles"] == 10
    every = Examples.concat([ds.train, ds.valid, ds.test])
    # 4,999 records list 10 titles and one lists 5; 10 history titles ("It") are not in the catalogue
    assert every.history_len.sum() == 49_995 - 10
    assert np.bincount(every.history_len).tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 10, 4_989]
    assert np.unique(every.target).size == 2_341
    child = ds.catalogue.title_to_items['A Child Called "It" (Dave Pelzer #1)']
    assert child.size == 1 and (every.history == child[0]).any()
    ds.validate()
