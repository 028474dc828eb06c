"""A small resumable, checksummed downloader (standard library ``urllib`` only) and the cache folder.

Raw files go to ``data_dir()/raw/<source>/`` and processed datasets to ``data_dir()/processed/``.
A transfer is written to ``<dest>.part`` and renamed to ``dest`` only after its size and checksum
have been verified, so a file at ``dest`` is always complete; an interrupted transfer resumes from
the ``.part`` file with an HTTP ``Range`` request.
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

__all__ = ["DownloadError", "data_dir", "download", "sha256_file"]

USER_AGENT = "recgym-downloader/1 (python urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(OSError):
    """A download failed: HTTP error, network error, incomplete transfer, or wrong size / checksum.

    A subclass of :class:`OSError` (like ``urllib.error.URLError``), so ``except OSError`` catches
    every download failure. The message names the URL and, for mismatches, the expected and actual
    values; they are also kept as attributes.

    Example:
        >>> err = DownloadError("http://x/a.gz: sha256 mismatch", url="http://x/a.gz")
        >>> isinstance(err, OSError), err.url
        (True, 'http://x/a.gz')
    """

    def __init__(
        self, message: str, *, url: str = "", status: int | None = None,
        expected: object = None, actual: object = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.expected = expected
        self.actual = actual


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

    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: size mismatch: expected {size} bytes, got {actual_size}",
                            url=url, expected=size, actual=actual_size)
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {actual}",
                                url=url, expected=sha256.lower(), actual=actual)
    os.replace(part, dest)
    return dest


def _matches(path: Path, sha256: str | None, size: int | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_file(path) == sha256.lower()


def _fetch(url: str, part: Path, offset: int, *, progress: bool, chunk_size: int, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` from byte ``offset`` (or rewrite it from zero)."""
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
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason}", url=url, status=err.code) from err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(f"{url}: cannot connect ({reason})", url=url) from err
        with response:
            status = response.status
            if status == 206:
                start = _parse_start(response.headers.get("Content-Range"))
                if start != offset:
                    if attempt == 0:  # the server resumed somewhere else: start over without Range
                        part.unlink(missing_ok=True)
                        offset = 0
                        continue
                    raise DownloadError(f"{url}: server resumed at byte {start}, asked for {offset}",
                                        url=url, status=status, expected=offset, actual=start)
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
                    f"the partial file {part} is kept and the next call resumes it",
                    url=url, status=status, expected=total, actual=got,
                ) from err
            if remaining is not None and received < remaining:
                got = offset + received
                raise DownloadError(
                    f"{url}: transfer incomplete: expected {total} bytes, got {got}; "
                    f"the partial file {part} is kept and the next call resumes it",
                    url=url, status=status, expected=total, actual=got,
                )
            return
    raise DownloadError(f"{url}: the server did not honour the Range request", url=url)


def _parse_start(content_range: str | None) -> int | None:
    match = _CONTENT_RANGE.match(content_range or "")
    return int(match.group(1)) if match else None


def _parse_total(content_range: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match.group(1)) if match else None
