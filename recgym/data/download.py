"""A small resumable, checksummed downloader (standard library ``urllib`` only) and the cache folder.

Raw files go to ``data_dir()/raw/<source>/`` and processed datasets to ``data_dir()/processed/``.
A transfer is written to ``<dest>.part`` and renamed to ``dest`` only after its size and checksum
have been verified, so a file at ``dest`` is always complete; an interrupted transfer resumes from
the ``.part`` file with an HTTP ``Range`` request.

Every failure is a :class:`DownloadError` (an ``OSError``) whose message names the URL, the cause
and the remedy, including where to put the file by hand when there is no network. Command-line
front ends should catch it and print ``str(err)``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from recgym.data.dataset import DataFormatError

__all__ = ["DownloadError", "data_dir", "download", "fetch_raw", "sha256_file", "verify_file"]

USER_AGENT = "recgym-downloader/1 (python urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(OSError):
    """A download failed: HTTP error, network error, incomplete transfer, or wrong size / checksum.

    A subclass of :class:`OSError` (like ``urllib.error.URLError``), so ``except OSError`` catches
    every download failure. The message names the URL, the cause and what to do (check the
    network, retry to resume, or put the file at ``dest`` by hand) and, for mismatches, the
    expected and actual values; they are also kept as attributes.

    Example:
        >>> err = DownloadError("http://x/a.gz: sha256 mismatch", url="http://x/a.gz", dest="raw/a.gz")
        >>> isinstance(err, OSError), err.url, err.dest
        (True, 'http://x/a.gz', 'raw/a.gz')
    """

    def __init__(
        self, message: str, *, url: str = "", status: int | None = None,
        expected: object = None, actual: object = None, dest: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.expected = expected
        self.actual = actual
        self.dest = None if dest is None else str(dest)


def data_dir() -> Path:
    """The folder for raw downloads and processed datasets.

    ``$RECGYM_DATA_DIR`` when set (and not empty); otherwise a per-user cache folder:
    ``%LOCALAPPDATA%\\recgym`` on Windows, else ``$XDG_CACHE_HOME/recgym`` or ``~/.cache/recgym``.
    The folder is not created here; writers create what they need.

    Example:
        >>> data_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/recgym')
        >>> (data_dir() / "processed").name
        'processed'
    """
    explicit = os.environ.get("RECGYM_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "recgym"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "recgym"


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as fh:
        ...     _ = fh.write(b"abc")
        >>> sha256_file(fh.name)[:16]
        'ba7816bf8f01cfea'
        >>> os.unlink(fh.name)
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified, atomic) and return ``dest``.

    * An existing ``dest`` is kept without any network access when it matches ``sha256`` (and
      ``size``) or when neither is given (files only ever reach ``dest`` complete). One that does
      not match is downloaded again.
    * Bytes go to ``dest.name + ".part"``. An existing ``.part`` is resumed with a ``Range``
      request; if the server answers 200 instead of 206, the transfer restarts from zero.
    * After the transfer, ``size`` and ``sha256`` (when given) are checked and only then is the
      file renamed to ``dest`` (``os.replace``).

    Raises:
        DownloadError: HTTP or network errors (naming the URL and status); a transfer that
            ended early (fewer bytes than announced; the ``.part`` is kept for a later resume);
            a size or checksum mismatch (the ``.part`` is deleted).

    Example:
        >>> download("https://example.org/data.json.gz", data_dir() / "raw" / "data.json.gz",
        ...          sha256="...")  # doctest: +SKIP
        PosixPath('/home/me/.cache/recgym/raw/data.json.gz')
    """
    dest = Path(dest)
    if dest.exists() and _matches(dest, sha256, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is None or offset < size:
        _fetch(url, part, offset, progress=progress, chunk_size=chunk_size, timeout=timeout)

    stale = ("the downloaded bytes were deleted. The server's file is not the expected one: retry "
             "later or from a mirror, or, if the upstream file changed on purpose, update the expected value")
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: size mismatch for {dest.name}: expected {size} bytes, "
                            f"got {actual_size}; {stale}", url=url, expected=size, actual=actual_size,
                            dest=dest)
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: sha256 mismatch for {dest.name}: expected {sha256.lower()}, "
                                f"got {actual}; {stale}", url=url, expected=sha256.lower(), actual=actual,
                                dest=dest)
    os.replace(part, dest)
    return dest


_download_file = download  # fetch_raw's ``download`` flag shadows the function's name


def verify_file(path: str | os.PathLike[str], *, size: int | None = None, sha256: str | None = None) -> None:
    """Check a local file against an expected size and SHA-256 (each optional).

    Raises:
        DataFormatError: naming the file, what differs (expected vs got) and the remedy.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as fh:
        ...     _ = fh.write(b"abc")
        >>> abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        >>> verify_file(fh.name, size=3, sha256=abc)
        >>> verify_file(fh.name, size=4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        recgym.data.dataset.DataFormatError: ...: size mismatch: expected 4 bytes, got 3; ...
        >>> os.unlink(fh.name)
    """
    remedy = ("the file is damaged or another version: delete it and download it again "
              "(download=True, or `recgym data download` with the dataset's name)")
    actual_size = Path(path).stat().st_size
    if size is not None and actual_size != size:
        raise DataFormatError(path, f"size mismatch: expected {size} bytes, got {actual_size}; {remedy}")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256.lower():
            raise DataFormatError(path, f"sha256 mismatch: expected {sha256.lower()}, got {actual}; {remedy}")


def fetch_raw(
    url: str, dest: Path, *, download: bool, progress: bool = True,
    size: int | None = None, sha256: str | None = None,
) -> Path:
    """The raw file at ``dest`` (or its un-gzipped twin without ``.gz``), downloading it if allowed.

    ``size`` / ``sha256`` (when known) are checked for a downloaded file (a mismatch is a
    :class:`DownloadError`) and for a file already at ``dest``: one that does not match is
    downloaded again when ``download`` is true, and is a :class:`DataFormatError` otherwise. An
    un-gzipped twin cannot be checked against the values of the gzipped file and is used as is.

    Raises:
        FileNotFoundError: the file is missing and ``download`` is false (the message says where
            to put it and which URL it comes from).
        DownloadError: the download failed or the downloaded file does not match.
        DataFormatError: a local file does not match ``size`` / ``sha256`` and ``download`` is false.

    Example:
        >>> fetch_raw("https://example.org/x.json.gz", data_dir() / "raw" / "x.json.gz",
        ...           download=True, size=1234, sha256="...")  # doctest: +SKIP
        PosixPath('/home/me/.cache/recgym/raw/x.json.gz')
    """
    dest = Path(dest)
    if dest.exists():
        if size is None and sha256 is None:
            return dest
        if download:  # download() keeps a matching file and replaces one that does not match
            return _download_file(url, dest, size=size, sha256=sha256, progress=progress)
        verify_file(dest, size=size, sha256=sha256)
        return dest
    if dest.suffix == ".gz" and dest.with_suffix("").exists():
        return dest.with_suffix("")
    if not download:
        raise FileNotFoundError(f"{dest} does not exist; pass download=True to fetch it from {url}, "
                                "or put the file there yourself")
    return _download_file(url, dest, size=size, sha256=sha256, progress=progress)


def _matches(path: Path, sha256: str | None, size: int | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_file(path) == sha256.lower()


def _fetch(url: str, part: Path, offset: int, *, progress: bool, chunk_size: int, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` from byte ``offset`` (or rewrite it from zero)."""
    dest = part.with_name(part.name[: -len(".part")])
    for attempt in range(2):
        headers = {"User-Agent": USER_AGENT}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset > 0:
                # Range not satisfiable: the .part is already whole (or longer than the file).
                total = _parse_total(err.headers.get("Content-Range"))
                err.close()
                if total == offset:
                    return
                part.unlink(missing_ok=True)
                offset = 0
                continue
            err.close()
            raise DownloadError(
                f"{url}: HTTP {err.code} {err.reason}. Check the URL (or the mirror it was built from); "
                f"or download the file yourself and put it at {dest}",
                url=url, status=err.code, dest=dest) from err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(
                f"{url}: cannot connect ({reason}). Check the network connection (and any proxy "
                f"setting), or download the file yourself and put it at {dest}",
                url=url, dest=dest) from err
        with response:
            status = response.status
            if status == 206:
                start = _parse_start(response.headers.get("Content-Range"))
                if start != offset:
                    if attempt == 0:  # the server resumed somewhere else: start over without Range
                        part.unlink(missing_ok=True)
                        offset = 0
                        continue
                    raise DownloadError(f"{url}: server resumed at byte {start}, asked for {offset}; "
                                        f"delete {part} and try again", url=url, status=status,
                                        expected=offset, actual=start, dest=dest)
                mode = "ab"
            else:  # 200 (a server that ignores Range sends the whole file): restart from zero
                offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            remaining = int(length) if length is not None and length.isdigit() else None
            total = None if remaining is None else offset + remaining
            received = 0
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=part.name[: -len(".part")], disable=not progress, leave=False)
            try:
                with bar, open(part, mode) as out:
                    while chunk := response.read(chunk_size):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as err:
                got = offset + received
                raise DownloadError(
                    f"{url}: transfer incomplete after {got} of {total or '?'} bytes ({err}); "
                    f"the partial file {part} is kept: run the same command again to resume it",
                    url=url, status=status, expected=total, actual=got, dest=dest,
                ) from err
            if remaining is not None and received < remaining:
                got = offset + received
                raise DownloadError(
                    f"{url}: transfer incomplete: expected {total} bytes, got {got}; "
                    f"the partial file {part} is kept: run the same command again to resume it",
                    url=url, status=status, expected=total, actual=got, dest=dest,
                )
            return
    raise DownloadError(f"{url}: the server did not honour the Range request; delete {part} and try again",
                        url=url, dest=dest)


def _parse_start(content_range: str | None) -> int | None:
    match = _CONTENT_RANGE.match(content_range or "")
    return int(match.group(1)) if match else None


def _parse_total(content_range: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match.group(1)) if match else None
