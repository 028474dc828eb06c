"""The format table (recgym.data.formats) and the input guards every reader shares: duplicate JSON
keys, JSON nested too deeply, the file-size limit and unknown reader options."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recgym.data import Catalogue, DataFormatError, Dataset, Examples, load
from recgym.data.checks import DEFAULT_MAX_FILE_BYTES, max_file_bytes
from recgym.data.formats import FORMATS, FormatSpec, detect_format, format_names, read_folder
from recgym.data.formats.lcrec import read_lcrec
from recgym.data.formats.sprec import read_sprec


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RECGYM_MAX_FILE_BYTES", raising=False)


def write_lcrec(root: Path, inter_text: str, num_items: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "T.inter.json").write_text(inter_text)
    (root / "T.item2id").write_text("".join(f"A{i}\t{i}\n" for i in range(num_items)))
    (root / "T.index.json").write_text(json.dumps({str(i): [f"<a_{i}>"] for i in range(num_items)}))
    return root


def write_sprec(
    root: Path, records: list[dict], id2name: str | None = None, name2id: str | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps(records))
    (root / "id2name.json").write_text(id2name or json.dumps({"0": "Dune", "1": "Emma"}))
    if name2id is not None:
        (root / "name2id.json").write_text(name2id)
    return root


def record(history: str, target: str) -> dict[str, str]:
    return {"instruction": "x", "input": f"The user has read the following books before: {history}, please "
            "write a new book", "output": f'"{target}"\n'}


# -- the table ---------------------------------------------------------------------------------


def test_table_holds_every_format_in_detection_order() -> None:
    assert list(FORMATS) == ["lcrec", "sprec", "d3"]
    assert format_names() == ["d3", "lcrec", "sprec"]
    for name, spec in FORMATS.items():
        assert isinstance(spec, FormatSpec) and spec.name == name
        assert "max_history" in spec.options() and "name" in spec.options()
    assert "seed" in FORMATS["sprec"].options() and "seed" not in FORMATS["d3"].options()


def test_a_spec_is_callable_like_the_old_reader_table(tmp_path: Path) -> None:
    root = write_lcrec(tmp_path / "t", '{"0": [0, 1, 2, 3]}')
    ds = FORMATS["lcrec"](root, max_history=2)
    assert ds.test.histories() == [[1, 2]] and ds.test.target.tolist() == [3]


def toy_reader(folder: Path | str, *, max_history: int = 10, name: str | None = None) -> Dataset:
    """A one-file format: each line of items.toy is a user's item sequence."""
    seqs = [[int(x) for x in line.split()] for line in (Path(folder) / "items.toy").read_text().splitlines()]
    n = max(max(s) for s in seqs) + 1
    test = Examples.from_lists([s[:-1] for s in seqs], [s[-1] for s in seqs], max_history)
    empty = Examples.empty(max_history)
    return Dataset(name or "toy", Catalogue(n, titles=[f"T{i}" for i in range(n)]), empty, empty, test)


def test_a_new_format_is_one_table_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = FormatSpec("toy", "lines of item ids", lambda f: (f / "items.toy").is_file(), toy_reader,
                      "items.toy")
    monkeypatch.setitem(FORMATS, "toy", spec)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "items.toy").write_text("0 1 2\n2 3\n")
    assert detect_format(folder) == "toy" and "toy" in format_names()
    assert read_folder(folder, max_history=2).test.histories() == [[0, 1], [2]]
    # the registry goes through the same table (and caches the result)
    assert load(folder).test.target.tolist() == [2, 3]
    assert load(folder, format="toy").test.target.tolist() == [2, 3]
    with pytest.raises(ValueError, match="unknown option 'seed' for the toy reader"):
        read_folder(folder, seed=1)
    (folder / "items.toy").unlink()
    with pytest.raises(DataFormatError, match=r"items.toy \(toy\)$"):
        detect_format(folder)


def test_unknown_reader_option_names_the_known_ones(tmp_path: Path) -> None:
    root = write_lcrec(tmp_path / "t", '{"0": [0, 1, 2]}')
    with pytest.raises(ValueError, match=r"unknown option 'bogus' for the lcrec reader; "
                                         r"known options: max_history, name$"):
        read_folder(root, bogus=1)
    with pytest.raises(ValueError, match=r"unknown options 'a', 'b' for the lcrec reader of .*known options"):
        load(root, a=1, b=2)


# -- duplicate keys ----------------------------------------------------------------------------


def test_duplicate_user_in_lcrec_inter_is_an_error(tmp_path: Path) -> None:
    # json.loads would keep [3, 2, 1] and silently lose the first sequence of user 0
    root = write_lcrec(tmp_path / "t", '{"0": [0, 1, 2],\n "1": [1, 2, 3],\n "0": [3, 2, 1]}')
    with pytest.raises(DataFormatError, match=r"T.inter.json, key '0': the key appears twice") as err:
        read_lcrec(root)
    assert str(root / "T.inter.json") in str(err.value)


def test_duplicate_item_in_lcrec_index_is_an_error(tmp_path: Path) -> None:
    root = write_lcrec(tmp_path / "t", '{"0": [0, 1, 2]}', num_items=3)
    (root / "T.index.json").write_text('{"0": ["<a_0>"], "1": ["<a_1>"], "2": ["<a_2>"], "1": ["<a_9>"]}')
    with pytest.raises(DataFormatError, match=r"T.index.json, key '1': the key appears twice"):
        read_lcrec(root)


@pytest.mark.parametrize("where", ["id2name", "name2id", "record"])
def test_duplicate_keys_in_sprec_files_are_errors(tmp_path: Path, where: str) -> None:
    records = [record('"Dune"', "Emma"), record('"Emma"', "Dune")]
    id2name = '{"0": "Dune", "1": "Emma", "0": "Persuasion"}' if where == "id2name" else None
    name2id = '{"Dune": 0, "Emma": 1, "Dune": 1}' if where == "name2id" else None
    root = write_sprec(tmp_path / "s", records, id2name=id2name, name2id=name2id)
    if where == "record":
        text = json.dumps(records)
        (root / "train.json").write_text(text.replace('"output"', '"input": "again", "output"', 1))
    file, key = {"id2name": ("id2name.json", "'0'"), "name2id": ("name2id.json", "'Dune'"),
                 "record": ("train.json", "'input'")}[where]
    with pytest.raises(DataFormatError, match=f"{file}, key {key}: the key appears twice"):
        read_sprec(root)


# -- JSON nested too deeply --------------------------------------------------------------------


def test_deeply_nested_json_names_the_file(tmp_path: Path) -> None:
    root = write_lcrec(tmp_path / "t", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataFormatError, match=r"T.inter.json: JSON nested too deeply") as err:
        read_lcrec(root)
    assert str(root / "T.inter.json") in str(err.value)
    sprec = write_sprec(tmp_path / "s", [record('"Dune"', "Emma")])
    (sprec / "train.json").write_text('[{"input": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    with pytest.raises(DataFormatError, match=r"train.json: JSON nested too deeply"):
        read_sprec(sprec)


# -- the size guard ----------------------------------------------------------------------------


def test_size_limit_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_lcrec(tmp_path / "t", json.dumps({str(u): [0, 1, 2, 3] for u in range(20)}))
    size = (root / "T.inter.json").stat().st_size
    assert 100 < size < 1000
    monkeypatch.setenv("RECGYM_MAX_FILE_BYTES", "100")
    message = rf"file too large to read whole: {size:,} bytes, the limit is 100; raise it with \$RECGYM_MAX"
    with pytest.raises(DataFormatError, match=message) as err:
        read_lcrec(root)
    assert err.value.path == str(root / "T.inter.json")
    monkeypatch.setenv("RECGYM_MAX_FILE_BYTES", "0")  # 0: no limit
    assert len(read_lcrec(root).test) == 20
    monkeypatch.setenv("RECGYM_MAX_FILE_BYTES", "2GB")
    with pytest.raises(ValueError, match="RECGYM_MAX_FILE_BYTES must be a number of bytes"):
        read_lcrec(root)


def test_a_file_over_the_default_limit_fails_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert max_file_bytes() == DEFAULT_MAX_FILE_BYTES == 1 << 30
    root = write_lcrec(tmp_path / "t", "{}")
    big = root / "T.inter.json"
    with open(big, "wb") as fh:  # sparse: 1 GiB + 1 byte on paper, nothing on disk
        fh.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    real_read_text, real_open = Path.read_text, Path.open

    def guarded_read_text(self: Path, *args: object, **kwargs: object) -> str:
        assert self != big, "the huge file was read"
        return real_read_text(self, *args, **kwargs)

    def guarded_open(self: Path, *args: object, **kwargs: object):
        assert self != big, "the huge file was opened"
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded_read_text)
    monkeypatch.setattr(Path, "open", guarded_open)
    with pytest.raises(DataFormatError, match=f"T.inter.json: file too large to read whole: "
                                              f"{DEFAULT_MAX_FILE_BYTES + 1:,} bytes"):
        read_lcrec(root)


def test_size_limit_applies_to_d3_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "info").mkdir()
    (tmp_path / "info" / "c.txt").write_text("A\t0\nB\t1\n")
    for split in ("valid", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "c.csv").write_text("user_id," * 200 + "\n")
    monkeypatch.setenv("RECGYM_MAX_FILE_BYTES", str(os.path.getsize(tmp_path / "valid" / "c.csv") - 1))
    with pytest.raises(DataFormatError, match=r"valid/c.csv: file too large to read whole"):
        read_folder(tmp_path)
