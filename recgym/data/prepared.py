"""The prepared folders (``games-lcrec``, ``office-d3``, ...) as pinned files of public repositories.

Each prepared folder is a byte-for-byte copy of files that a public GitHub repository published at
a known commit. :data:`PREPARED_PINS` lists, per folder, every file: where it goes in the folder,
the repository, commit and path it comes from, and its size and SHA-256 (computed from the
project's verified copies, which were checked against each file's git blob id).
:func:`download_prepared` (``recgym data download NAME``) fetches every file from
``https://raw.githubusercontent.com/OWNER/REPO/COMMIT/PATH`` with the resumable, verified
downloader of :mod:`recgym.data.download`, into ``data_dir()/NAME/``:

* each file is written to ``<file>.part`` and renamed into place only after its size and SHA-256
  match; a mismatch is a :class:`~recgym.data.download.DownloadError` naming the file, the URL and
  the expected and actual values;
* a folder that is not there yet is assembled as ``data_dir()/NAME.download/`` and renamed to
  ``NAME`` only when every file is verified, so a half-fetched folder is never found by
  :func:`recgym.data.load`; running the command again resumes it;
* files already in place that match their pins are not fetched again.

Every file is a plain download: nothing is processed. The data are research-use-only Amazon
Review Data (2018) and UCSD Book Graph files; see README's Data section for the terms.

``$RECGYM_PREPARED_MIRROR`` (a base URL laid out as ``BASE/OWNER/REPO/COMMIT/PATH``) replaces
``https://raw.githubusercontent.com``, e.g. for a local mirror.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from recgym.data.download import DownloadError, data_dir, download, sha256_file

__all__ = ["MIRROR_ENV", "PREPARED_PINS", "RAW_BASE_URL", "PreparedFile", "download_prepared",
           "file_url", "prepared_names", "verify_prepared"]

RAW_BASE_URL = "https://raw.githubusercontent.com"
#: Set to a base URL (``BASE/OWNER/REPO/COMMIT/PATH``) to download from a mirror instead.
MIRROR_ENV = "RECGYM_PREPARED_MIRROR"


class Source(NamedTuple):
    """A public repository at a pinned commit."""

    repo: str
    commit: str


class PreparedFile(NamedTuple):
    """One file of a prepared folder: where it goes, where it comes from, and its pin.

    Example:
        >>> f = PREPARED_PINS["games-lcrec"][0]
        >>> f.name, f.source.repo, f.size
        ('Games.index.json', 'WncFht/GenRec', 886651)
    """

    name: str  # path inside the prepared folder
    source: Source
    path: str  # path inside the repository
    size: int
    sha256: str


_GENREC = Source("WncFht/GenRec", "6b50a813e071f6e31b4052319f1b723ea01a934f")
_RERE = Source("sober-clever/ReRe", "7d69eeef92f62d55825f1d1f17c0a1fc5091cfd4")
_MINIONEREC = Source("AkaliKong/MiniOneRec", "81b4ba9811cfb152cf161f1c486fe516510d081e")
_SPREC = Source("RegionCh/SPRec", "5fec95b793379167caf5ae07787975d3dc413365")
_CARE = Source("Linxyhaha/CARE", "9af734f2b48a9643c5246ac68c1a9f16770bc2a8")
_BIGREC = Source("SAI990323/BIGRec", "bb4dd0a5f8867b66a6d3ee0080955649e51fe21a")

_F = PreparedFile

#: folder name -> its files. ``games-lcrec``, ``office-d3``, ``industrial-d3`` and
#: ``goodreads-sprec`` are datasets (:data:`recgym.data.registry.PREPARED_FOLDERS`); ``care-sid``
#: holds SID index files (D3 item ids), ``games-bigrec`` and ``toys-d3`` title catalogues only.
PREPARED_PINS: dict[str, tuple[PreparedFile, ...]] = {
    "games-lcrec": (
        _F("Games.index.json",
           _GENREC, "data/Games/Games.index.json",
           886651, "994420bb670c07b7efde946e3e4557baed1e3c5603264d815153568b23fbe6c2"),
        _F("Games.inter.json",
           _GENREC, "data/Games/Games.inter.json",
           3232210, "18a1e1841f341b8589cb087046ddf15c7c7ab846e605521a9bcf90659465eff3"),
        _F("Games.item2id",
           _GENREC, "data/Games/Games.item2id",
           275493, "170725a554c2ef87823a9d85c00b8a6e37bbb2b8dff3491f3146b62d9a211cb0"),
        _F("Games.user2id",
           _GENREC, "data/Games/Games.user2id",
           1037193, "e4462188a278e13d596b79b2d293fba1799d6367cda7a9e2ce5afab56b13feeb"),
    ),
    "office-d3": (
        _F("info/Office_Products_5_2016-10-2018-11.txt",
           _RERE, "data/Amazon/info/Office_Products_5_2016-10-2018-11.txt",
           290082, "4d8c87c9b5ffd7c424d90859d1ab171985187198efd99efde25b86a40b482cbb"),
        _F("minionerec/index/Office_Products.index.json",
           _MINIONEREC, "data/Amazon/index/Office_Products.index.json",
           142839, "f599d2b858beb5a2f660d6253896746c25a65f3a7d0c2f3ae6fd4ec2091eebc8"),
        _F("minionerec/index/Office_Products.item.json",
           _MINIONEREC, "data/Amazon/index/Office_Products.item.json",
           2570582, "398cb2bb7868bedf2ed8ed6b24d25e172f21b7022554d1f8ea52200478494c1c"),
        _F("minionerec/info/Office_Products_5_2016-10-2018-11.txt",
           _MINIONEREC, "data/Amazon/info/Office_Products_5_2016-10-2018-11.txt",
           361392, "7e8bae0a051a377713364b9e669590f86feb869fc269157c64b2189c0f4bcfa4"),
        _F("minionerec/test/Office_Products_5_2016-10-2018-11.csv",
           _MINIONEREC, "data/Amazon/test/Office_Products_5_2016-10-2018-11.csv",
           3310265, "c1967034e197a7837a8962f2556efaabc12eb5bb84e1fdc79cd0accbce71add5"),
        _F("minionerec/valid/Office_Products_5_2016-10-2018-11.csv",
           _MINIONEREC, "data/Amazon/valid/Office_Products_5_2016-10-2018-11.csv",
           3038060, "a7d8f049ae425f413def22687cebcd172c65833633ff76dd3d90a83bca98234f"),
        _F("test/Office_Products_5_2016-10-2018-11.csv",
           _RERE, "data/Amazon/test/Office_Products_5_2016-10-2018-11.csv",
           3599379, "5bc859f03154341ec39319567b7210b68493f9c9b4337b5e9e966ca9fbdd5818"),
        _F("valid/Office_Products_5_2016-10-2018-11.csv",
           _RERE, "data/Amazon/valid/Office_Products_5_2016-10-2018-11.csv",
           3310090, "da5847ecb789d88a8fb5ed9d8f3d10ad5b540bd6e01673572551a065dac36703"),
    ),
    "industrial-d3": (
        _F("info/Industrial_and_Scientific_5_1996-10-2018-11.txt",
           _RERE, "data/Amazon/info/Industrial_and_Scientific_5_1996-10-2018-11.txt",
           298225, "cb1efc39dc7636e543c01f4d89d07c5d95dfd38b0f35690d186adedd72d36afa"),
        _F("minionerec/index/Industrial_and_Scientific.index.json",
           _MINIONEREC, "data/Amazon/index/Industrial_and_Scientific.index.json",
           152189, "53f1aefbe8b8aa774326c122606c6525300c5a325e7b78817739d465aeb335f8"),
        _F("minionerec/index/Industrial_and_Scientific.item.json",
           _MINIONEREC, "data/Amazon/index/Industrial_and_Scientific.item.json",
           3008778, "937600c7a03652f55864a1d12d6e9fe8ca3e24ecc4e255a88216b25c5f949496"),
        _F("minionerec/info/Industrial_and_Scientific_5_2016-10-2018-11.txt",
           _MINIONEREC, "data/Amazon/info/Industrial_and_Scientific_5_2016-10-2018-11.txt",
           374118, "bdc51fd9636e361db095c84de4e2650b3dd9606812c92e7a01f3b77c5c1a84f7"),
        _F("minionerec/test/Industrial_and_Scientific_5_2016-10-2018-11.csv",
           _MINIONEREC, "data/Amazon/test/Industrial_and_Scientific_5_2016-10-2018-11.csv",
           3105687, "973dd1db4fd549f3f2b40a0f039dbae157ebb92c716197cc246401e4e82c3a46"),
        _F("minionerec/valid/Industrial_and_Scientific_5_2016-10-2018-11.csv",
           _MINIONEREC, "data/Amazon/valid/Industrial_and_Scientific_5_2016-10-2018-11.csv",
           2915875, "12bbb02bced0bd754a8b4e0f9ca4086416e30d12b0b73a2c95e7b195dd67385a"),
        _F("test/Industrial_and_Scientific_5_1996-10-2018-11.csv",
           _RERE, "data/Amazon/test/Industrial_and_Scientific_5_1996-10-2018-11.csv",
           3372790, "0b9a6b6b6e43cd8ce2546c1df02ad73d3851492b5bc906aa9d42a02762daf582"),
        _F("valid/Industrial_and_Scientific_5_1996-10-2018-11.csv",
           _RERE, "data/Amazon/valid/Industrial_and_Scientific_5_1996-10-2018-11.csv",
           3172009, "9a2e00e45a2c02dedf36aa76f2a3804fa563c839ca6f54566309df12b87bbecf"),
    ),
    "goodreads-sprec": (
        _F("genre_dict.json",
           _SPREC, "eval/Goodreads/genre_dict.json",
           193, "7dbc35402f611e24d2068326edb1cccd182fc63fbf16bbd84d1020334f7daa71"),
        _F("id2name.json",
           _SPREC, "eval/Goodreads/id2name.json",
           174061, "2c275735eb004f08ccd3464cfd98530ae7b3e446a05ff829550d5e30bf1b23b1"),
        _F("name2genre.json",
           _SPREC, "eval/Goodreads/name2genre.json",
           412521, "50f2bfb2156f5172ea048ea98fc4c351d3c5d7e1f494ba6ebe56ca2a3d8874d9"),
        _F("name2id.json",
           _SPREC, "eval/Goodreads/name2id.json",
           165945, "1ab171e265a45e752d27fce638950913f8fc32291db9e564592fd4e1858cee19"),
        _F("train.json",
           _SPREC, "data/Goodreads/train.json",
           3473573, "c81b048a15c5051f7d942cd9d1610aff7330fa1f52e3eaed2b0ffad197c073a8"),
    ),
    "care-sid": (
        _F("Toys_and_Games.TIGER-index.json",
           _CARE, "data/info/Toys_and_Games.TIGER-index.json",
           577794, "e061e0f99ef0a360816c5690732bfb53174af1de42c3e3bb5e4b503a5671b6c3"),
        _F("Video_Games.LETTER-index.json",
           _CARE, "data/info/Video_Games.LETTER-index.json",
           577007, "97eba4d3eb90f4566abdae7dc970130ea508b16965417d5ab01af099ebcd37f0"),
        _F("Video_Games.TIGER-index.json",
           _CARE, "data/info/Video_Games.TIGER-index.json",
           575431, "65b783f37547e420873d5387ee5b896a6b9054b8fbf67c0303fe47b88037cba3"),
    ),
    "games-bigrec": (
        _F("id2name.txt",
           _BIGREC, "data/game/id2name.txt",
           863958, "50df58849b58869a4c7dae3b0303312961bc270f3080e81ddc8134de1e8adfce"),
    ),
    "toys-d3": (
        _F("info/Toys_and_Games_5_2016-10-2018-11.txt",
           _RERE, "data/Amazon/info/Toys_and_Games_5_2016-10-2018-11.txt",
           683395, "12012df16eab0cee54d6fb7e30f044cda456ae8ec2233d6d0147825383c98597"),
    ),
}


def prepared_names() -> list[str]:
    """The folders ``recgym data download`` can fetch.

    Example:
        >>> prepared_names()[:2]
        ['games-lcrec', 'office-d3']
    """
    return list(PREPARED_PINS)


def file_url(file: PreparedFile, base_url: str | None = None) -> str:
    """The download URL of ``file``: ``BASE/OWNER/REPO/COMMIT/PATH`` (GitHub's raw layout).

    Example:
        >>> file_url(PREPARED_PINS["games-bigrec"][0])
        'https://raw.githubusercontent.com/SAI990323/BIGRec/bb4dd0a5f8867b66a6d3ee0080955649e51fe21a/data/game/id2name.txt'
    """
    base = (base_url or os.environ.get(MIRROR_ENV) or RAW_BASE_URL).rstrip("/")
    return f"{base}/{file.source.repo}/{file.source.commit}/{file.path}"


def download_prepared(
    name: str, *, root: str | os.PathLike[str] | None = None, base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch the prepared folder ``name`` into ``root`` (default ``data_dir()``) and return it.

    Every file is verified against its pin (size and SHA-256) before it is renamed into place. A
    folder that is absent is assembled as ``NAME.download`` and renamed when complete; files of an
    existing folder that match their pins are kept, others are fetched again.

    Raises:
        ValueError: ``name`` is not a prepared folder (the message lists them).
        DownloadError: a network or HTTP error, or a file whose size or SHA-256 differs from its
            pin (the message names the file, the URL and the expected and actual values).

    Example:
        >>> download_prepared("games-lcrec")  # doctest: +SKIP
        PosixPath('/home/me/.cache/recgym/games-lcrec')
    """
    if name not in PREPARED_PINS:
        raise ValueError(f"no prepared folder named {name!r}; one of {', '.join(PREPARED_PINS)}")
    root = Path(data_dir() if root is None else root)
    final = root / name
    target = final if final.is_dir() else root / f"{name}.download"
    for file in PREPARED_PINS[name]:
        url = file_url(file, base_url)
        dest = target / file.name
        try:
            download(url, dest, sha256=file.sha256, size=file.size, progress=progress)
        except DownloadError as err:
            raise DownloadError(f"{name}/{file.name}: {err}", url=err.url, status=err.status,
                                expected=err.expected, actual=err.actual, dest=err.dest) from err
    if target != final:
        os.replace(target, final)
    return final


def verify_prepared(name: str, folder: str | os.PathLike[str]) -> list[str]:
    """The files of ``folder`` that are missing or differ from the pins of ``name`` (empty: all good).

    Example:
        >>> verify_prepared("games-lcrec", "/nonexistent")[0]
        'Games.index.json: missing'
    """
    problems = []
    for file in PREPARED_PINS[name]:
        path = Path(folder) / file.name
        if not path.is_file():
            problems.append(f"{file.name}: missing")
        elif path.stat().st_size != file.size:
            problems.append(f"{file.name}: expected {file.size} bytes, got {path.stat().st_size}")
        elif (actual := sha256_file(path)) != file.sha256:
            problems.append(f"{file.name}: sha256 expected {file.sha256}, got {actual}")
    return problems
