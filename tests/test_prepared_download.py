"""`recgym data download NAME` for the prepared folders, against a local HTTP server (127.0.0.1 only).

The server lays files out like raw.githubusercontent.com (``/OWNER/REPO/COMMIT/PATH``) and is
reached through ``$RECGYM_PREPARED_MIRROR``. Real-data tests serve the project's verified copies
in ``../shared/data`` under the real pins; the others serve small stand-ins with their own pins.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
from test_download import FileServer

from recgym.data import prepared
from recgym.data.download import DownloadError
from recgym.data.prepared import PREPARED_PINS, PreparedFile, Source, download_prepared, file_url


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RECGYM_DATA_PATH", raising=False)
    monkeypatch.delenv(prepared.MIRROR_ENV, raising=False)


@pytest.fixture
def server(monkeypatch):
    with FileServer() as srv:
        monkeypatch.setenv(prepared.MIRROR_ENV, srv.url)
        yield srv


def serve(server: FileServer, files: tuple[PreparedFile, ...], root: Path) -> None:
    for f in files:
        server.files[f"/{f.source.repo}/{f.source.commit}/{f.path}"] = (root / f.name).read_bytes()


SRC = Source("someone/toy", "0" * 40)
TOY = {"a.json": b'{"x": 1}\n', "sub/b.txt": b"hello\tworld\n"}


def toy_pins(files: dict[str, bytes] = TOY) -> tuple[PreparedFile, ...]:
    return tuple(PreparedFile(name, SRC, f"data/{name}", len(data), hashlib.sha256(data).hexdigest())
                 for name, data in files.items())


def test_pin_table_holds_the_verified_copies(shared_data):
    # every file of the project's verified copies is pinned with its size and SHA-256, and nothing else
    manifest = {line.split()[1]: line.split()[0]
                for line in (shared_data / "MANIFEST.sha256").read_text().splitlines() if line.strip()}
    pinned = {f"{name}/{f.name}": f.sha256 for name, files in PREPARED_PINS.items() for f in files}
    assert pinned == manifest
    for name in PREPARED_PINS:
        assert prepared.verify_prepared(name, shared_data / name) == []
    for name in ("games-lcrec", "office-d3", "industrial-d3", "goodreads-sprec", "care-sid"):
        assert name in PREPARED_PINS
    f = PREPARED_PINS["games-lcrec"][1]
    assert file_url(f) == ("https://raw.githubusercontent.com/WncFht/GenRec/"
                           "6b50a813e071f6e31b4052319f1b723ea01a934f/data/Games/Games.inter.json")


def test_missing_prepared_folder_names_the_command():
    import gymnasium as gym

    import recgym  # noqa: F401  (registers the ids)

    with pytest.raises(FileNotFoundError, match="`recgym data download games-lcrec`"):
        gym.make("RecGen-Games-v0")
    from recgym.data import load

    with pytest.raises(FileNotFoundError, match="`recgym data download office-d3`"):
        load("office-d3")


def test_cli_download_games_lcrec_then_gym_make(server, shared_data, tmp_path, capsys):
    import gymnasium as gym

    import recgym  # noqa: F401
    from agents.cli import main

    serve(server, PREPARED_PINS["games-lcrec"], shared_data / "games-lcrec")
    assert main(["data", "download", "games-lcrec"]) == 0
    assert "16859 items" in capsys.readouterr().out
    folder = tmp_path / "cache" / "games-lcrec"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in PREPARED_PINS["games-lcrec"])
    assert not (tmp_path / "cache" / "games-lcrec.download").exists()
    assert len(server.requests) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("RecGen-Games-v0")
        obs, _ = env.reset(seed=0)
    assert isinstance(obs, dict) and obs
    # a second download finds every file verified and asks the server nothing
    assert download_prepared("games-lcrec", progress=False) == folder
    assert len(server.requests) == 4


def test_cli_downloads_the_sid_index_files(server, shared_data, tmp_path, capsys):
    from agents.cli import main

    serve(server, PREPARED_PINS["care-sid"], shared_data / "care-sid")
    assert main(["data", "download", "care-sid"]) == 0
    out = capsys.readouterr().out
    assert "care-sid: every file verified" in out
    assert prepared.verify_prepared("care-sid", tmp_path / "cache" / "care-sid") == []


def test_mismatch_names_file_hashes_and_url_and_leaves_nothing_in_place(server, tmp_path, monkeypatch):
    files = toy_pins()
    monkeypatch.setitem(PREPARED_PINS, "toy", files)
    src = tmp_path / "src"
    for name, data in TOY.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    serve(server, files, src)
    bad = files[1]
    url = file_url(bad)
    server.files["/" + url.split("/", 3)[3]] = b"hello\tWORLD\n"  # same size, other bytes
    with pytest.raises(DownloadError) as info:
        download_prepared("toy", progress=False)
    message = str(info.value)
    actual = hashlib.sha256(b"hello\tWORLD\n").hexdigest()
    assert message.startswith("toy/sub/b.txt: ") and url in message
    assert bad.sha256 in message and actual in message
    cache = tmp_path / "cache"
    assert not (cache / "toy").exists()  # the folder is never found half-fetched
    assert (cache / "toy.download" / "a.json").read_bytes() == TOY["a.json"]
    assert not (cache / "toy.download" / "sub" / "b.txt").exists()
    assert not (cache / "toy.download" / "sub" / "b.txt.part").exists()
    # once the server has the right bytes, a rerun fetches only the missing file
    server.files["/" + url.split("/", 3)[3]] = TOY["sub/b.txt"]
    before = len(server.requests)
    assert download_prepared("toy", progress=False) == cache / "toy"
    assert [p for p, _ in server.requests[before:]] == ["/" + url.split("/", 3)[3]]
    assert (cache / "toy" / "sub" / "b.txt").read_bytes() == TOY["sub/b.txt"]
    assert not (cache / "toy.download").exists()


def test_damaged_file_in_a_finished_folder_is_fetched_again(server, tmp_path, monkeypatch):
    files = toy_pins()
    monkeypatch.setitem(PREPARED_PINS, "toy", files)
    folder = tmp_path / "cache" / "toy"
    for name, data in TOY.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "a.json").write_bytes(b"damaged")
    src = tmp_path / "src"
    for name, data in TOY.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    serve(server, files, src)
    assert download_prepared("toy", progress=False) == folder
    assert [p for p, _ in server.requests] == ["/someone/toy/" + "0" * 40 + "/data/a.json"]
    assert (folder / "a.json").read_bytes() == TOY["a.json"]


def test_http_error_names_the_file_and_url(server, monkeypatch):
    monkeypatch.setitem(PREPARED_PINS, "toy", toy_pins())
    pattern = r"toy/a.json: http://127\.0\.0\.1:\d+/someone/toy/0+/data/a.json: HTTP 404"
    with pytest.raises(DownloadError, match=pattern):
        download_prepared("toy", progress=False)


def test_unknown_name_lists_the_folders():
    with pytest.raises(ValueError, match="games-lcrec"):
        download_prepared("nope")
