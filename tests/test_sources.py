"""The raw-source table (recgym.data.sources): what each source declares, one shared prepare_raw,
and the pins downloads are verified against. End-to-end runs against a local HTTP server are in
tests/test_pipelines.py; the downloader's checks are in tests/test_download.py."""

from __future__ import annotations

import calendar
import warnings
from collections.abc import Mapping
from pathlib import Path

import pytest

from recgym.data import DataFormatError, DataWarning, load, registry
from recgym.data.download import sha256_file
from recgym.data.protocol import InteractionLog
from recgym.data.sources import (
    PINS,
    RAW_SOURCES,
    Pin,
    RawSource,
    get_source,
    pin,
    prepare_raw,
    source_names,
)
from recgym.data.sources.amazon import AMAZON_CATEGORIES, AMAZON_URLS
from recgym.data.sources.goodreads import GOODREADS_URLS
from recgym.data.sources.pins import main as pins_main


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    for name in ("RECGYM_AMAZON_URL", "RECGYM_GOODREADS_URL", "RECGYM_REQUIRE_PINS"):
        monkeypatch.delenv(name, raising=False)


def test_table_and_what_each_source_declares() -> None:
    assert source_names() == ["amazon", "goodreads"] and set(RAW_SOURCES) == {"amazon", "goodreads"}
    amazon, goodreads = RAW_SOURCES["amazon"], RAW_SOURCES["goodreads"]
    assert (amazon.subset_arg, amazon.default_subset, amazon.default_end) == ("category", None, "2018-11")
    assert (goodreads.subset_arg, goodreads.default_subset) == ("genre", "poetry")
    assert goodreads.default_end is None
    assert len(AMAZON_CATEGORIES) == 29 and amazon.subsets == AMAZON_CATEGORIES
    assert amazon.urls("Video_Games") == {
        "reviews": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/"
                   "Video_Games_5.json.gz",
        "meta": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/metaFiles2/meta_Video_Games.json.gz",
    }
    assert amazon.urls("Toys_and_Games") == AMAZON_URLS["Toys_and_Games"]
    assert goodreads.urls("poetry") == GOODREADS_URLS["poetry"]
    files = goodreads.files("children")
    assert [(f.key, f.name) for f in files.values()] == [
        ("goodreads/goodreads_interactions_children.json.gz", "goodreads_interactions_children.json.gz"),
        ("goodreads/goodreads_books_children.json.gz", "goodreads_books_children.json.gz"),
    ]
    assert all(f.size is None and f.sha256 is None and not f.pinned for f in files.values())


def test_pins_reach_the_file_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PINS, "amazon/meta_Software.json.gz", pin(__file__))
    meta = RAW_SOURCES["amazon"].files("Software")["meta"]
    assert meta.pinned and meta.size == Path(__file__).stat().st_size and len(meta.sha256) == 64
    assert not RAW_SOURCES["amazon"].files("Software")["reviews"].pinned


def test_mirror_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RAW_SOURCES["goodreads"].urls("poetry", "http://127.0.0.1:9/gr/")["books"] == (
        "http://127.0.0.1:9/gr/goodreads_books_poetry.json.gz")
    monkeypatch.setenv("RECGYM_AMAZON_URL", "http://127.0.0.1:9/amz")
    assert RAW_SOURCES["amazon"].urls("Software")["reviews"] == (
        "http://127.0.0.1:9/amz/categoryFilesSmall/Software_5.json.gz")


def test_unknown_source_subset_or_parameters_fail_before_any_download() -> None:
    with pytest.raises(ValueError, match="unknown raw source 'movielens'; known sources: amazon, goodreads"):
        get_source("movielens")
    with pytest.raises(ValueError, match="unknown raw source 'movielens'"):
        prepare_raw("movielens", "ml-1m")
    with pytest.raises(ValueError, match="unknown Amazon 2018 category 'Games'; one of AMAZON_FASHION"):
        prepare_raw("amazon", "Games")
    with pytest.raises(ValueError, match="unknown Amazon 2018 category None"):
        prepare_raw("amazon")  # Amazon has no default category
    with pytest.raises(ValueError, match="max_history must be a positive int"):
        prepare_raw("goodreads", max_history=0)
    with pytest.raises(ValueError, match="YYYY-MM"):
        prepare_raw("goodreads", start="last year")


# -- a new source is one RawSource ---------------------------------------------------------------

def parse_ratings(
    paths: Mapping[str, Path], *, progress: bool = True
) -> tuple[InteractionLog, dict[str, str]]:
    """``user,item,yyyy-mm-dd`` lines and ``item,title`` lines."""
    log = InteractionLog()
    for line in paths["ratings"].read_text().splitlines():
        user, item, day = line.split(",")
        year, month, dom = map(int, day.split("-"))
        log.add(user, item, calendar.timegm((year, month, dom, 0, 0, 0)))
    titles = dict(line.split(",", 1) for line in paths["items"].read_text().splitlines())
    return log, titles


TOY = RawSource(
    name="toyshop", label="Toy shop", citation="a hand-written test source", subset_arg="shop",
    subsets=("north", "south"), base_url="http://127.0.0.1:9/toyshop", url_env="RECGYM_TOYSHOP_URL",
    layout={"ratings": "{subset}/ratings.csv", "items": "{subset}/items.csv"}, parse=parse_ratings,
    default_subset="north", extra_info={"rule": "every line is an interaction"},
)


def write_toyshop(folder: Path) -> None:
    folder.mkdir(parents=True)
    # three users buy items a, b, c on consecutive days; user w buys only once (dropped by the 2-core)
    rows = [f"{u},{i},2020-01-0{d + 1 + k}" for k, u in enumerate("uvx") for d, i in enumerate("abc")]
    (folder / "ratings.csv").write_text("\n".join([*rows, "w,a,2020-01-09"]) + "\n")
    (folder / "items.csv").write_text("a,Alpha &amp; Co\nb,Beta\nc,Gamma\n")


def test_a_new_source_is_one_table_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toyshop(tmp_path / "raw")
    with pytest.warns(DataWarning, match=r"(ratings|items).csv is used unverified"):
        ds = prepare_raw(TOY, raw_dir=tmp_path / "raw", download=False, min_items=1, k=2, max_history=2,
                         cache=False, progress=False)
    assert ds.name == "toyshop-north" and ds.catalogue.keys == ["a", "b", "c"]
    assert ds.catalogue.titles == ["Alpha & Co", "Beta", "Gamma"]  # the protocol cleaned the title
    assert ds.users == ["u", "v", "x"]
    every = sorted(zip(ds.train.target.tolist() + ds.valid.target.tolist() + ds.test.target.tolist()))
    assert every == sorted([(1,), (2,)] * 3)  # b after a, c after a-b, for each of the 3 users
    assert ds.info["shop"] == "north" and ds.info["rule"] == "every line is an interaction"
    assert ds.info["files"] == {"ratings": "ratings.csv", "items": "items.csv"}
    assert ds.info["urls"]["items"] == "http://127.0.0.1:9/toyshop/north/items.csv"

    # registered in the tables, it is a dataset name like the others
    monkeypatch.setitem(RAW_SOURCES, "toyshop", TOY)
    monkeypatch.setitem(registry.RAW_PIPELINES, "toys-north", ("toyshop", "north"))
    assert get_source("toyshop") is TOY
    with pytest.warns(DataWarning):
        again = load("toys-north", raw_dir=tmp_path / "raw", min_items=1, k=2, max_history=2, progress=False)
    assert again.catalogue.keys == ["a", "b", "c"]
    assert list((tmp_path / "cache" / "processed").glob("toyshop-north-h2-*.npz"))
    with pytest.raises(ValueError, match="unknown Toy shop shop 'east'"):
        load("toys-north", shop="east")


def test_unpinned_files_are_reported_or_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toyshop(tmp_path / "raw")
    items = tmp_path / "raw" / "items.csv"
    size, digest = items.stat().st_size, sha256_file(items)
    with pytest.warns(DataWarning) as caught:
        ds = prepare_raw(TOY, raw_dir=tmp_path / "raw", download=False, min_items=1, k=2, cache=False,
                         progress=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and messages[1] == (
        f"{items} is used unverified (no size / sha256 is pinned for it): {size} bytes, sha256 {digest}. "
        f'If this copy is right, pin it by adding `"toyshop/items.csv": Pin(size={size}, '
        f'sha256="{digest}"),` to PINS in recgym/data/sources/pins.py')
    assert ds.info["file_checks"]["items"] == {"size": size, "sha256": digest, "verified": False}
    # pinned and matching: verified, no warning; a local copy that differs is refused
    monkeypatch.setitem(PINS, "toyshop/items.csv", Pin(size, digest))
    monkeypatch.setitem(PINS, "toyshop/ratings.csv", pin(tmp_path / "raw" / "ratings.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = prepare_raw(TOY, raw_dir=tmp_path / "raw", download=False, min_items=1, k=2, cache=False,
                         progress=False)
    assert ds.info["file_checks"]["items"] == {"size": size, "sha256": digest, "verified": True}
    items.write_text(items.read_text().replace("Beta", "Bext"))
    with pytest.raises(DataFormatError, match=rf"items.csv: sha256 mismatch: expected {digest}, got "):
        prepare_raw(TOY, raw_dir=tmp_path / "raw", download=False, min_items=1, k=2, cache=False)
    # $RECGYM_REQUIRE_PINS refuses files without a pin
    monkeypatch.delitem(PINS, "toyshop/ratings.csv")
    monkeypatch.setenv("RECGYM_REQUIRE_PINS", "1")
    refused = r"ratings.csv: refusing an unverified raw file \(no size / sha256 is pinned for it\) because "
    with pytest.raises(DataFormatError, match=refused + r"\$RECGYM_REQUIRE_PINS is set"):
        prepare_raw(TOY, raw_dir=tmp_path / "raw", download=False, min_items=1, k=2, cache=False)


def test_pins_command_prints_lines_to_paste(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw" / "amazon"
    raw.mkdir(parents=True)
    (raw / "meta_Software.json.gz").write_bytes(b"abc")
    assert pins_main([str(raw / "meta_Software.json.gz")]) == 0
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert capsys.readouterr().out == f'    "amazon/meta_Software.json.gz": Pin(size=3, sha256="{abc}"),\n'
    assert pins_main(["--source", "goodreads", str(raw / "meta_Software.json.gz")]) == 0
    assert capsys.readouterr().out.startswith('    "goodreads/meta_Software.json.gz": Pin(size=3,')
    assert pins_main([str(raw / "missing.gz")]) == 2
