"""The resumable downloader against a local HTTP server (127.0.0.1 only) that honours Range."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recgym.data.dataset import DataFormatError
from recgym.data.download import DownloadError, data_dir, download, fetch_raw, sha256_file

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FileServer:
    """Serves ``files`` by path. ``mode``: "normal" (honours ``Range: bytes=N-``), "ignore_range"
    (always 200 with the whole file) or "truncate" (announces the full length, sends half, closes)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if server.mode == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                if match and server.mode == "normal":
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    body = data[start:]
                else:
                    self.send_response(200)
                    body = data
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    with FileServer() as srv:
        srv.files["/data.bin"] = PAYLOAD
        yield srv


def test_download_verifies_sha256_and_size(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "data.bin"
    out = download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    assert server.requests == [("/data.bin", None)]
    # A finished file with the right checksum is not downloaded again.
    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA.upper(), progress=False)
    assert len(server.requests) == 1


def test_progress_bar_and_small_chunks(server: FileServer, tmp_path: Path) -> None:
    dest = download(server.url + "/data.bin", tmp_path / "data.bin", progress=True, chunk_size=1000)
    assert sha256_file(dest) == PAYLOAD_SHA


def test_existing_file_with_wrong_checksum_is_downloaded_again(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_existing_file_without_checksum_is_kept(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"whatever")
    assert download(server.url + "/data.bin", dest, progress=False).read_bytes() == b"whatever"
    assert server.requests == []


def test_resume_from_part_file_with_range(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD[:3000])
    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=False)
    assert server.requests == [("/data.bin", "bytes=3000-")]
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()


def test_server_that_ignores_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    server.mode = "ignore_range"
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(b"garbage that is not a prefix")
    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests == [("/data.bin", "bytes=28-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_on_416(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD)
    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_part_file_already_of_expected_size_needs_no_request(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD)
    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=False)
    assert server.requests == [] and dest.read_bytes() == PAYLOAD


def test_truncated_transfer_keeps_part_and_resumes(server: FileServer, tmp_path: Path) -> None:
    server.mode = "truncate"
    dest = tmp_path / "data.bin"
    part = dest.with_name("data.bin.part")
    with pytest.raises(DownloadError, match="incomplete") as info:
        download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.url + "/data.bin" in str(info.value)
    assert info.value.expected == len(PAYLOAD) and info.value.actual == len(PAYLOAD) // 2
    assert not dest.exists()
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    # The next call resumes where the transfer stopped.
    server.mode = "normal"
    download(server.url + "/data.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests[-1] == ("/data.bin", f"bytes={len(PAYLOAD) // 2}-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_wrong_checksum_deletes_part_and_raises(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download(server.url + "/data.bin", dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert "sha256 mismatch" in message and wrong in message and PAYLOAD_SHA in message
    assert server.url + "/data.bin" in message
    assert isinstance(info.value, OSError)
    assert not dest.exists() and not dest.with_name("data.bin.part").exists()


def test_wrong_size_deletes_part_and_raises(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=f"expected 99999 bytes, got {len(PAYLOAD)}"):
        download(server.url + "/data.bin", dest, size=99999, progress=False)
    assert not dest.exists() and not dest.with_name("data.bin.part").exists()


def test_http_404_names_url_and_status(server: FileServer, tmp_path: Path) -> None:
    url = server.url + "/missing.bin"
    with pytest.raises(DownloadError, match="404") as info:
        download(url, tmp_path / "missing.bin", progress=False)
    assert url in str(info.value) and info.value.status == 404
    assert not (tmp_path / "missing.bin").exists()


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}/x"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", progress=False, timeout=5)


def test_no_network_message_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/raw/Video_Games_5.json.gz"
    dest = tmp_path / "raw" / "Video_Games_5.json.gz"
    with pytest.raises(DownloadError) as info:
        fetch_raw(url, dest, download=True, progress=False)
    message = str(info.value)
    assert message.startswith(f"{url}: cannot connect (")
    assert "Check the network connection" in message and f"put it at {dest}" in message
    assert info.value.url == url and info.value.dest == str(dest)


def test_http_error_message_says_where_to_put_the_file(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=rf"HTTP 404 .*put it at {tmp_path / 'gone.bin'}"):
        download(server.url + "/gone.bin", tmp_path / "gone.bin", progress=False)


def test_fetch_raw_verifies_pinned_size_and_sha256(server: FileServer, tmp_path: Path) -> None:
    url = server.url + "/data.bin"
    dest = tmp_path / "raw" / "data.bin"
    assert fetch_raw(url, dest, download=True, size=len(PAYLOAD), sha256=PAYLOAD_SHA, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1
    # a verified local copy is used without a request
    fetch_raw(url, dest, download=False, size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    assert len(server.requests) == 1


def test_fetch_raw_rejects_a_download_that_differs_from_its_pin(server: FileServer, tmp_path: Path) -> None:
    url = server.url + "/data.bin"
    dest = tmp_path / "data.bin"
    wrong = "f" * 64
    with pytest.raises(DownloadError) as info:
        fetch_raw(url, dest, download=True, size=len(PAYLOAD), sha256=wrong, progress=False)
    message = str(info.value)
    assert message.startswith(f"{url}: sha256 mismatch for data.bin: expected {wrong}, got {PAYLOAD_SHA}")
    assert info.value.expected == wrong and info.value.actual == PAYLOAD_SHA
    assert not dest.exists() and not dest.with_name("data.bin.part").exists()
    with pytest.raises(DownloadError, match=rf"size mismatch for data.bin: expected 7 bytes, "
                                            rf"got {len(PAYLOAD)}"):
        fetch_raw(url, dest, download=True, size=7, progress=False)
    assert not dest.exists()


def test_fetch_raw_checks_a_local_copy_against_its_pin(server: FileServer, tmp_path: Path) -> None:
    url = server.url + "/data.bin"
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD[:-1] + b"X")  # same size, other bytes
    with pytest.raises(DataFormatError) as info:
        fetch_raw(url, dest, download=False, size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    assert str(info.value).startswith(f"{dest}: sha256 mismatch: expected {PAYLOAD_SHA}, got ")
    assert "download it again" in str(info.value) and server.requests == []
    # with download allowed, the damaged copy is replaced by a verified download
    fetch_raw(url, dest, download=True, size=len(PAYLOAD), sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_fetch_raw_missing_file_without_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pass download=True to fetch it from http://x/y.gz"):
        fetch_raw("http://x/y.gz", tmp_path / "y.gz", download=False)
    (tmp_path / "y").write_text("plain")  # the un-gzipped twin is used
    assert fetch_raw("http://x/y.gz", tmp_path / "y.gz", download=False, sha256=PAYLOAD_SHA) == tmp_path / "y"


def test_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "explicit"))
    assert data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("RECGYM_DATA_DIR")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "recgym"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "recgym"
    monkeypatch.setattr("sys.platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert data_dir() == tmp_path / "local" / "recgym"
