"""Raw Amazon 2018 / Goodreads pipelines end to end on tiny generated files served from 127.0.0.1.

The expected splits come from a literal pure-Python transcription of the D3 procedure (dicts,
sets and sorted(); the way D3's own script does it), written independently of
``recgym.data.protocol``, so the vectorised pipeline is cross-checked on the same data.
"""

from __future__ import annotations

import calendar
import gzip
import json
import random
import threading
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from recgym.data.amazon import amazon_urls, prepare_amazon
from recgym.data.dataset import DataFormatError, Dataset, DataWarning
from recgym.data.download import DownloadError, sha256_file
from recgym.data.goodreads import prepare_goodreads
from recgym.data.protocol import clean_title, k_core, read_json_lines
from recgym.data.sources import PINS, Pin, prepare_raw

DAY = 86400

# No raw file is pinned here: the tests that check pins and the "unverified" warning say so explicitly.
pytestmark = pytest.mark.filterwarnings("ignore:.*is used unverified:recgym.data.dataset.DataWarning")


# -- a static file server that counts requests ---------------------------------------------------

class CountingServer:
    def __init__(self, root: Path) -> None:
        self.paths: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.paths.append(self.path)
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    server = CountingServer(root)
    yield root, server
    server.close()


@pytest.fixture(autouse=True)
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "recgym-data"
    monkeypatch.setenv("RECGYM_DATA_DIR", str(home))
    monkeypatch.delenv("RECGYM_AMAZON_URL", raising=False)
    monkeypatch.delenv("RECGYM_GOODREADS_URL", raising=False)
    return home


def write_json_lines(path: Path, rows: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def utc(year: int, month: int, day: int = 1) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0))


# -- tiny raw data --------------------------------------------------------------------------------

def make_items(rng: random.Random, n: int) -> tuple[list[str], dict[str, str | None], dict[str, str | None]]:
    """Item keys, the raw title per key (None: no title key / no meta line) and the clean title the
    D3 rules give (None: dropped)."""
    keys = [f"B{index:05d}X" for index in rng.sample(range(10_000, 99_999), n)]
    raw: dict[str, str | None] = {}
    clean: dict[str, str | None] = {}
    kinds = ["plain"] * (n - 12) + ["entity", "nbsp", "spaces", "html", "js", "long", "empty",
                                    "blank", "missing", "no-meta", "exactly20", "brace"]
    rng.shuffle(kinds)
    for i, (key, kind) in enumerate(zip(keys, kinds)):
        name = f"Item {i}"
        raw[key], clean[key] = {
            "plain": (name, name),
            "entity": (f"Mario &amp; Luigi &#39;{i}&#39; &quot;DX&quot;", f"Mario & Luigi '{i}' \"DX\""),
            "nbsp": (f"Zelda&nbsp;{i}", f"Zelda {i}"),
            "spaces": (f"  Pad \t {i}\n ", f"Pad {i}"),
            "html": (f'<span id="x{i}">Deal</span>', None),
            "js": ("var aPageStart = (new Date()).getTime();", None),
            "long": (" ".join(["word"] * 21), None),
            "exactly20": (" ".join(["w"] * 19 + [str(i)]), " ".join(["w"] * 19 + [str(i)])),
            "brace": (f"Console {{Limited}} {i}", f"Console {{Limited}} {i}"),
            "empty": ("", None),
            "blank": ("   ", None),
            "missing": (None, None),
            "no-meta": (None, None),
        }[kind]
        if kind == "no-meta":
            raw.pop(key)
    return keys, raw, clean


def make_log(
    rng: random.Random, users: list[str], items: list[str], first: int, last: int
) -> list[tuple[str, str, int]]:
    """(user, item, day-granular time): each user is active for one to three years, with ties."""
    rows = []
    popular = items[: len(items) // 2]
    for user in users:
        begin = rng.randrange(first, last - 365 * DAY) // DAY * DAY
        span = rng.randrange(365, 3 * 365) * DAY
        count = rng.choice([2, 4, 5, 6, 7, 8, 9, 12])
        for _ in range(count):
            item = rng.choice(popular) if rng.random() < 0.7 else rng.choice(items)
            rows.append((user, item, begin + rng.randrange(0, span) // DAY * DAY))
        if rng.random() < 0.3:  # a same-day pair: ties in time within a user
            rows.append((user, rng.choice(items), rows[-1][2]))
    rng.shuffle(rows)
    return rows


# -- the reference: D3 as plain Python ------------------------------------------------------------

def reference_d3(rows, titles, *, end, min_items, k=5, max_history=10, start=None):
    """rows: (user, item, time) in file order; titles: item -> clean title or None.
    Returns (train, valid, test, item keys sorted, window start)."""
    end_year, end_month = end
    end_ts = utc(end_year + end_month // 12, end_month % 12 + 1)
    candidates = [r for r in rows if titles.get(r[1]) is not None and r[2] < end_ts]
    data_start = min(r[2] for r in candidates)
    year, month = start or (end_year - 1, end_month)
    while True:
        start_ts = utc(year, month)
        window = [r for r in candidates if r[2] >= start_ts]
        removed_users: set[str] = set()
        removed_items: set[str] = set()
        while True:
            users, items, kept = Counter(), Counter(), []
            for r in window:
                if r[0] in removed_users or r[1] in removed_items:
                    continue
                users[r[0]] += 1
                items[r[1]] += 1
                kept.append(r)
            bad_users = {u for u, c in users.items() if c < k}
            bad_items = {i for i, c in items.items() if c < k}
            if not bad_users and not bad_items:
                break
            removed_users |= bad_users
            removed_items |= bad_items
        if len(items) >= min_items or start_ts <= data_start:
            break
        year -= 1
    per_user: dict[str, list[tuple[str, int]]] = {}
    for user, item, t in kept:
        per_user.setdefault(user, []).append((item, t))
    examples = []
    for user, seq in per_user.items():
        seq = sorted(seq, key=lambda x: x[1])
        for i in range(1, len(seq)):
            history = [item for item, _ in seq[max(0, i - max_history):i]]
            examples.append((user, history, seq[i][0], seq[i][1]))
    examples.sort(key=lambda x: x[3])
    n = len(examples)
    a, b = int(n * 0.8), int(n * 0.9)
    return examples[:a], examples[a:b], examples[b:], sorted(items), f"{year:04d}-{month:02d}"


def as_rows(ds: Dataset, split: str) -> list[tuple[str, list[str], str, int]]:
    ex = ds.split(split)
    keys, users = ds.catalogue.keys, ds.users
    return [(users[u], [keys[h] for h in hist], keys[t], int(ts))
            for u, hist, t, ts in zip(ex.user, ex.histories(), ex.target, ex.timestamp)]


def assert_matches_reference(ds: Dataset, expected, clean: dict[str, str | None]) -> None:
    train, valid, test, item_keys, start = expected
    assert ds.catalogue.keys == item_keys
    assert ds.catalogue.titles == [clean[key] for key in item_keys]
    assert ds.info["window"]["start"] == start
    for split, rows in zip(("train", "valid", "test"), (train, valid, test)):
        assert as_rows(ds, split) == rows, split
    ds.validate()


# -- Amazon ----------------------------------------------------------------------------------------

def amazon_raw(seed: int = 0):
    rng = random.Random(seed)
    keys, raw_titles, clean = make_items(rng, 40)
    users = [f"A{rng.randrange(16**10):010X}" for _ in range(160)]
    log = make_log(rng, users, keys, utc(2012, 1), utc(2019, 3))
    reviews = [{"overall": float(rng.randint(1, 5)), "verified": True, "reviewerID": u, "asin": a,
                "unixReviewTime": t, "reviewTime": "01 1, 2000", "summary": "ok"} for u, a, t in log]
    meta = []
    for key in keys:
        if key not in raw_titles:
            continue
        entry = {"asin": key, "brand": "Acme", "category": ["Video Games"]}
        if raw_titles[key] is not None:
            entry["title"] = raw_titles[key]
        meta.append(entry)
    first_titled = next(e for e in meta if clean[e["asin"]] is not None)
    meta.append({"asin": first_titled["asin"], "title": "A later duplicate line that loses"})
    meta.append({"asin": "B_UNREVIEWED", "title": "Never reviewed"})
    return log, reviews, meta, clean


def serve_amazon(root: Path, category: str, reviews, meta) -> None:
    write_json_lines(root / "amazon" / "categoryFilesSmall" / f"{category}_5.json.gz", reviews)
    write_json_lines(root / "amazon" / "metaFiles2" / f"meta_{category}.json.gz", meta)


def test_amazon_pipeline_matches_reference_and_caches(served, data_home: Path) -> None:
    root, server = served
    log, reviews, meta, clean = amazon_raw()
    serve_amazon(root, "Video_Games", reviews, meta)
    base = server.url + "/amazon"
    ds = prepare_amazon("Video_Games", base_url=base, min_items=20, progress=False)

    expected = reference_d3(log, clean, end=(2018, 11), min_items=20)
    assert_matches_reference(ds, expected, clean)
    window = ds.info["window"]
    assert window["widened_years"] >= 1 and not window["reached_data_start"], window
    assert window["end"] == "2018-11" and ds.catalogue.num_items >= 20
    assert ds.name == "amazon-Video_Games" and ds.info["category"] == "Video_Games"
    assert ds.max_history == 10
    assert server.paths == ["/amazon/categoryFilesSmall/Video_Games_5.json.gz",
                            "/amazon/metaFiles2/meta_Video_Games.json.gz"]
    raw = data_home / "raw" / "amazon"
    assert sorted(p.name for p in raw.iterdir()) == ["Video_Games_5.json.gz", "meta_Video_Games.json.gz"]
    cached = list((data_home / "processed").glob("amazon-Video_Games-h10-*.npz"))
    assert len(cached) == 1

    # The second call loads the cache: no request, no raw file needed.
    for path in raw.iterdir():
        path.unlink()
    again = prepare_amazon("Video_Games", base_url=base, min_items=20, progress=False)
    assert server.paths == server.paths[:2] and len(server.paths) == 2
    assert_matches_reference(again, expected, clean)
    assert again.users == ds.users and again.info == ds.info

    # Other parameters are another cache entry.
    other = prepare_amazon("Video_Games", base_url=base, min_items=20, max_history=3, progress=False)
    assert len(list((data_home / "processed").glob("amazon-Video_Games-h3-*.npz"))) == 1
    assert other.max_history == 3 and len(server.paths) == 4


def test_amazon_window_reaches_data_start_and_env_base_url(served, monkeypatch) -> None:
    root, server = served
    log, reviews, meta, clean = amazon_raw(seed=3)
    serve_amazon(root, "Toys_and_Games", reviews, meta)
    monkeypatch.setenv("RECGYM_AMAZON_URL", server.url + "/amazon/")
    ds = prepare_amazon("Toys_and_Games", min_items=10_000, max_history=4, cache=False, progress=False)
    assert_matches_reference(ds, reference_d3(log, clean, end=(2018, 11), min_items=10_000,
                                              max_history=4), clean)
    assert ds.info["window"]["reached_data_start"]
    assert len(server.paths) == 2


def test_amazon_explicit_window_without_widening(served) -> None:
    root, server = served
    log, reviews, meta, clean = amazon_raw(seed=1)
    serve_amazon(root, "Video_Games", reviews, meta)
    ds = prepare_amazon("Video_Games", base_url=server.url + "/amazon", min_items=1, start="2015-06",
                        end="2018-06", progress=False, cache=False)
    expected = reference_d3(log, clean, end=(2018, 6), min_items=1, start=(2015, 6))
    assert_matches_reference(ds, expected, clean)
    assert ds.info["window"] == {**ds.info["window"], "start": "2015-06", "end": "2018-06",
                                 "widened_years": 0}
    assert utc(2015, 6) <= ds.train.timestamp.min() and ds.test.timestamp.max() < utc(2018, 7)


def test_amazon_local_files_without_download(tmp_path: Path) -> None:
    log, reviews, meta, clean = amazon_raw(seed=2)
    raw = tmp_path / "mine"
    write_json_lines(raw / "Video_Games_5.json.gz", reviews)
    with pytest.raises(FileNotFoundError, match="download=True"):
        prepare_amazon("Video_Games", raw_dir=raw, download=False, progress=False)
    # An un-gzipped metadata file is read as well.
    (raw / "meta_Video_Games.json").write_text("".join(json.dumps(m) + "\n" for m in meta))
    ds = prepare_amazon("Video_Games", raw_dir=raw, download=False, min_items=20, progress=False)
    assert_matches_reference(ds, reference_d3(log, clean, end=(2018, 11), min_items=20), clean)


@pytest.mark.parametrize(("bad_line", "message"), [
    ("{not json", "not valid JSON"),
    ("{'reviewerID': 'A1', 'asin': 'B1', 'unixReviewTime': 1}", "Python dict literal"),
    ('["a", "list"]', "expected a JSON object"),
    ('{"reviewerID": "A1", "unixReviewTime": 1500000000}', "key 'asin': missing required key"),
    ('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": "soon"}', "key 'unixReviewTime'"),
])
def test_amazon_malformed_line_names_file_and_line(
    served, data_home: Path, bad_line: str, message: str
) -> None:
    root, server = served
    _, reviews, meta, _ = amazon_raw()
    serve_amazon(root, "Video_Games", reviews[:6] + [bad_line] + reviews[6:], meta)
    with pytest.raises(DataFormatError, match=message) as info:
        prepare_amazon("Video_Games", base_url=server.url + "/amazon", progress=False)
    assert "Video_Games_5.json.gz, line 7" in str(info.value)
    assert info.value.line == 7 and info.value.path.endswith("Video_Games_5.json.gz")
    assert not list(data_home.glob("processed/*.npz"))


def test_amazon_truncated_gzip_and_missing_meta_key(tmp_path: Path) -> None:
    _, reviews, meta, _ = amazon_raw()
    raw = tmp_path / "raw"
    write_json_lines(raw / "Video_Games_5.json.gz", reviews)
    write_json_lines(raw / "meta_Video_Games.json.gz", meta[:3] + [{"title": "no asin"}] + meta[3:])
    with pytest.raises(DataFormatError, match=r"meta_Video_Games.json.gz, line 4, key 'asin'"):
        prepare_amazon("Video_Games", raw_dir=raw, download=False, progress=False)
    whole = (raw / "Video_Games_5.json.gz").read_bytes()
    (raw / "Video_Games_5.json.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
        prepare_amazon("Video_Games", raw_dir=raw, download=False, progress=False)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_raw_pipeline_cache_is_rebuilt(tmp_path: Path, data_home: Path, damage: str) -> None:
    log, reviews, meta, clean = amazon_raw(seed=2)
    raw = tmp_path / "mine"
    write_json_lines(raw / "Video_Games_5.json.gz", reviews)
    write_json_lines(raw / "meta_Video_Games.json.gz", meta)
    first = prepare_amazon("Video_Games", raw_dir=raw, download=False, min_items=20, progress=False)
    (cache,) = (data_home / "processed").glob("amazon-Video_Games-h10-*.npz")
    whole = cache.read_bytes()
    cache.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 3])
    with pytest.warns(DataWarning, match="rebuilding a damaged or outdated cache"):
        again = prepare_amazon("Video_Games", raw_dir=raw, download=False, min_items=20, progress=False)
    assert again.info == first.info
    assert_matches_reference(again, reference_d3(log, clean, end=(2018, 11), min_items=20), clean)
    assert len(cache.read_bytes()) == len(whole)


def test_pinned_raw_files_are_verified(served, data_home: Path, monkeypatch) -> None:
    root, server = served
    log, reviews, meta, clean = amazon_raw()
    serve_amazon(root, "Video_Games", reviews, meta)
    files = {"reviews": root / "amazon" / "categoryFilesSmall" / "Video_Games_5.json.gz",
             "meta": root / "amazon" / "metaFiles2" / "meta_Video_Games.json.gz"}
    pins = {kind: Pin(path.stat().st_size, sha256_file(path)) for kind, path in files.items()}
    monkeypatch.setitem(PINS, "amazon/Video_Games_5.json.gz", pins["reviews"])
    monkeypatch.setitem(PINS, "amazon/meta_Video_Games.json.gz", pins["meta"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # verified files: no "unverified" warning
        ds = prepare_raw("amazon", "Video_Games", base_url=server.url + "/amazon", min_items=20,
                         cache=False, progress=False)
    assert ds.info["file_checks"] == {
        kind: {"size": pin.size, "sha256": pin.sha256, "verified": True} for kind, pin in pins.items()}
    assert_matches_reference(ds, reference_d3(log, clean, end=(2018, 11), min_items=20), clean)

    # The upstream file changes: the download is refused, naming the URL, the file, expected and got.
    for path in (data_home / "raw" / "amazon").iterdir():
        path.unlink()
    write_json_lines(files["meta"], meta[:-1])
    got = sha256_file(files["meta"])
    url = server.url + "/amazon/metaFiles2/meta_Video_Games.json.gz"
    with pytest.raises(DownloadError) as info:
        prepare_raw("amazon", "Video_Games", base_url=server.url + "/amazon", min_items=20, progress=False)
    assert str(info.value).startswith(f"{url}: size mismatch for meta_Video_Games.json.gz: expected "
                                      f"{pins['meta'].size} bytes, got {files['meta'].stat().st_size}")
    monkeypatch.setitem(PINS, "amazon/meta_Video_Games.json.gz", Pin(files["meta"].stat().st_size,
                                                                     pins["meta"].sha256))
    with pytest.raises(DownloadError, match=f"sha256 mismatch for meta_Video_Games.json.gz: "
                                            f"expected {pins['meta'].sha256}, got {got}"):
        prepare_raw("amazon", "Video_Games", base_url=server.url + "/amazon", min_items=20, progress=False)
    assert not (data_home / "raw" / "amazon" / "meta_Video_Games.json.gz").exists()
    assert not list(data_home.glob("processed/*.npz"))


def test_deeply_nested_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}\n{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DataFormatError, match=r"x.json, line 2: JSON nested too deeply"):
        list(read_json_lines(path, progress=False))


def test_unknown_category_and_bad_month() -> None:
    with pytest.raises(ValueError, match="unknown Amazon 2018 category"):
        amazon_urls("Games")
    with pytest.raises(ValueError, match="YYYY-MM"):
        prepare_amazon("Video_Games", end="Nov 2018", raw_dir="/nonexistent", download=False)


# -- protocol pieces -------------------------------------------------------------------------------

def test_clean_title_rules() -> None:
    assert clean_title("  A &amp;amp; B  ") == "A & B"
    assert clean_title("Less than <3 heart") == "Less than <3 heart"
    assert clean_title("</div> tail") is None and clean_title("<!-- x -->") is None
    assert clean_title("function() { return 1; }") is None
    assert clean_title(" ".join(["x"] * 20)) is not None and clean_title(" ".join(["x"] * 21)) is None
    assert clean_title(None) is None and clean_title(["list"]) is None and clean_title(" \n") is None


def test_k_core_cascades() -> None:
    # Item 2 has one interaction; removing it drops user 2 below k=2, which drops item 1's count.
    user = np.array([0, 0, 1, 1, 2, 2, 3])
    item = np.array([0, 1, 0, 3, 1, 2, 3])
    assert k_core(user, item, k=2).tolist() == [False, False, False, False, False, False, False]
    assert k_core(user, item, k=1).all()
    assert k_core(np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)


# -- Goodreads -------------------------------------------------------------------------------------

def goodreads_date(t: int, rng: random.Random) -> str:
    offset = rng.choice([-7, -4, 0, 1, 5.5])
    local = datetime.fromtimestamp(t, tz=timezone(timedelta(hours=offset)))
    return local.strftime("%a %b %d %H:%M:%S %z %Y")


def goodreads_raw(seed: int = 0):
    rng = random.Random(seed)
    keys, raw_titles, clean = make_items(rng, 36)
    keys = [str(rng.randrange(1, 10**7)) for _ in keys]  # numeric-string book ids
    raw_titles = {new: raw_titles[old] for new, old in zip(keys, list(clean)) if old in raw_titles}
    clean = {new: value for new, value in zip(keys, clean.values())}
    users = [f"{rng.randrange(16**32):032x}" for _ in range(80)]
    base = make_log(rng, users, keys, utc(2010, 1), utc(2017, 11))
    rows, log = [], []
    for user, book, t in base:
        t += rng.randrange(DAY)  # Goodreads times have seconds
        is_read, rating = rng.choice([(True, 0), (True, 4), (False, 3), (True, 5)])
        date = goodreads_date(t, rng)
        rows.append({"user_id": user, "book_id": book, "review_id": "r", "is_read": is_read,
                     "rating": rating, "review_text_incomplete": "", "date_added": date,
                     "date_updated": date, "read_at": "", "started_at": ""})
        log.append((user, book, int(datetime.strptime(date, "%a %b %d %H:%M:%S %z %Y").timestamp())))
        if rng.random() < 0.15:  # shelved only, or without a date: not interactions
            rows.append({**rows[-1], "is_read": False, "rating": 0, "book_id": rng.choice(keys)})
        if rng.random() < 0.05:
            rows.append({**rows[-1], "is_read": True, "date_added": ""})
    books = [{"book_id": key, "title": raw_titles[key], "title_without_series": "x"}
             for key in keys if key in raw_titles and raw_titles[key] is not None]
    books += [{"book_id": key, "isbn": ""} for key in keys if key in raw_titles and raw_titles[key] is None]
    return log, rows, books, clean


def test_goodreads_pipeline_matches_reference_and_caches(served, data_home: Path) -> None:
    root, server = served
    log, rows, books, clean = goodreads_raw()
    write_json_lines(root / "gr" / "goodreads_interactions_poetry.json.gz", rows)
    write_json_lines(root / "gr" / "goodreads_books_poetry.json.gz", books)
    base = server.url + "/gr"
    ds = prepare_goodreads(base_url=base, min_items=15, progress=False)

    titled_times = [t for _, book, t in log if clean.get(book) is not None]
    last = datetime.fromtimestamp(max(titled_times), tz=timezone.utc)
    expected = reference_d3(log, clean, end=(last.year, last.month), min_items=15)
    assert_matches_reference(ds, expected, clean)
    assert ds.info["window"]["widened_years"] >= 1 and not ds.info["window"]["reached_data_start"]
    assert ds.info["counts"]["skipped"]["not_read_or_rated"] > 0
    assert ds.info["counts"]["skipped"]["no_date_added"] > 0
    assert ds.name == "goodreads-poetry"
    assert len(server.paths) == 2
    assert len(list((data_home / "raw" / "goodreads").glob("*.json.gz"))) == 2
    assert len(list((data_home / "processed").glob("goodreads-poetry-h10-*.npz"))) == 1

    again = prepare_goodreads(base_url=base, min_items=15, progress=False)
    assert len(server.paths) == 2
    assert_matches_reference(again, expected, clean)


def test_goodreads_malformed_date_and_line(served, data_home: Path, monkeypatch) -> None:
    root, server = served
    _, rows, books, _ = goodreads_raw()
    monkeypatch.setenv("RECGYM_GOODREADS_URL", server.url + "/gr")
    bad = {**rows[0], "is_read": True, "date_added": "yesterday"}
    write_json_lines(root / "gr" / "goodreads_interactions_poetry.json.gz", rows[:4] + [bad] + rows[4:])
    write_json_lines(root / "gr" / "goodreads_books_poetry.json.gz", books)
    with pytest.raises(DataFormatError, match=r"poetry.json.gz, line 5, key 'date_added'"):
        prepare_goodreads(progress=False)
    # Fix the interactions, break the books file; drop the downloaded copies so both are fetched again.
    for path in (data_home / "raw" / "goodreads").iterdir():
        path.unlink()
    write_json_lines(root / "gr" / "goodreads_interactions_poetry.json.gz", rows)
    write_json_lines(root / "gr" / "goodreads_books_poetry.json.gz", books[:2] + ["{oops"] + books[2:])
    with pytest.raises(DataFormatError, match=r"goodreads_books_poetry.json.gz, line 3: not valid JSON"):
        prepare_goodreads(progress=False)
