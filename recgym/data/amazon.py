"""Amazon Reviews 2018 (Ni, Li & McAuley, EMNLP 2019) -> :class:`Dataset` by the D3 protocol.

Source: https://nijianmo.github.io/amazon/index.html (research use only; cite the paper). Two files
per category: the 5-core reviews ``<Category>_5.json.gz`` (one JSON object per line with
``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``, ...) and the metadata
``meta_<Category>.json.gz`` (one JSON object per line with ``asin``, ``title``, ...).

Raw files are kept in ``data_dir()/raw/amazon/``; the processed dataset is cached as
``data_dir()/processed/amazon-<Category>-h<max_history>-<params hash>.npz``.
"""

from __future__ import annotations

import os
from pathlib import Path

from recgym.data.dataset import DataFormatError, Dataset
from recgym.data.download import data_dir
from recgym.data.protocol import (
    InteractionLog,
    build_dataset,
    cache_path,
    cached_dataset,
    check_params,
    fetch_raw,
    read_json_lines,
    required,
)

__all__ = ["AMAZON_BASE_URL", "AMAZON_CATEGORIES", "AMAZON_URLS", "amazon_urls", "prepare_amazon",
           "read_amazon"]

AMAZON_BASE_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2"

#: Every category of the 2018 release that has a 5-core file.
AMAZON_CATEGORIES = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music",
    "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Luxury_Beauty", "Magazine_Subscriptions",
    "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden",
    "Pet_Supplies", "Prime_Pantry", "Software", "Sports_and_Outdoors", "Tools_and_Home_Improvement",
    "Toys_and_Games", "Video_Games",
)

#: category -> {"reviews": 5-core reviews URL, "meta": metadata URL}
AMAZON_URLS: dict[str, dict[str, str]] = {
    category: {
        "reviews": f"{AMAZON_BASE_URL}/categoryFilesSmall/{category}_5.json.gz",
        "meta": f"{AMAZON_BASE_URL}/metaFiles2/meta_{category}.json.gz",
    }
    for category in AMAZON_CATEGORIES
}


def amazon_urls(category: str, base_url: str | None = None) -> dict[str, str]:
    """The two URLs of a category, under ``base_url`` or ``$RECGYM_AMAZON_URL`` when given.

    A mirror must keep the upstream layout (``categoryFilesSmall/`` and ``metaFiles2/``).

    Example:
        >>> amazon_urls("Video_Games", "http://127.0.0.1:8000/amazon")["meta"]
        'http://127.0.0.1:8000/amazon/metaFiles2/meta_Video_Games.json.gz'
    """
    if category not in AMAZON_URLS:
        raise ValueError(f"unknown Amazon 2018 category {category!r}; one of {', '.join(AMAZON_CATEGORIES)}")
    base = base_url or os.environ.get("RECGYM_AMAZON_URL")
    urls = AMAZON_URLS[category]
    if not base:
        return dict(urls)
    return {kind: base.rstrip("/") + url[len(AMAZON_BASE_URL):] for kind, url in urls.items()}


def read_amazon(
    reviews_path: str | os.PathLike[str], meta_path: str | os.PathLike[str], *, progress: bool = True
) -> tuple[InteractionLog, dict[str, str]]:
    """Parse a reviews file and a metadata file (gzipped or not).

    Returns the reviews as an :class:`InteractionLog` (``reviewerID``, ``asin``,
    ``unixReviewTime``) and the raw title of every reviewed ASIN that has one. When an ASIN has
    several metadata lines (the 2018 files have duplicates), the first one wins.

    Raises:
        DataFormatError: a line that is not a JSON object, or a missing / mistyped required key
            (naming the file, line and key).

    Example:
        >>> log, titles = read_amazon("Video_Games_5.json.gz", "meta_Video_Games.json.gz")  # doctest: +SKIP
        >>> len(log), titles["B00004SVYT"]  # doctest: +SKIP
        (497577, 'Super Mario Bros. Deluxe')
    """
    log = InteractionLog()
    for line, review in read_json_lines(reviews_path, progress=progress):
        stamp = required(review, "unixReviewTime", reviews_path, line, kind=(int, str))
        try:
            stamp = int(stamp)
        except ValueError:
            raise DataFormatError(reviews_path, f"not a unix time: {stamp!r}", line=line,
                                  key="unixReviewTime") from None
        log.add(required(review, "reviewerID", reviews_path, line),
                required(review, "asin", reviews_path, line), stamp)
    titles: dict[str, str] = {}
    wanted = log.item_ids
    for line, meta in read_json_lines(meta_path, progress=progress):
        asin = required(meta, "asin", meta_path, line)
        title = meta.get("title")
        if asin in wanted and asin not in titles and isinstance(title, str):
            titles[asin] = title
    return log, titles


def prepare_amazon(
    category: str,
    *,
    raw_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    download: bool = True,
    max_history: int = 10,
    min_items: int = 10_000,
    start: str | None = None,
    end: str = "2018-11",
    k: int = 5,
    max_words: int = 20,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """An Amazon Reviews 2018 category processed by the D3 protocol (cached).

    See :mod:`recgym.data.protocol` for the steps. Items are re-indexed 0..N-1 by sorted ASIN
    (``catalogue.keys``), users are reviewerIDs by first appearance (``Dataset.users``).

    Args:
        category: e.g. ``"Video_Games"`` or ``"Toys_and_Games"`` (see :data:`AMAZON_CATEGORIES`).
        raw_dir: where the raw files are (default ``data_dir()/raw/amazon``). Un-gzipped copies
            (``Video_Games_5.json``) are used too.
        base_url: a mirror of the upstream layout (default ``$RECGYM_AMAZON_URL``, else upstream).
        download: download missing raw files; otherwise a missing file is a FileNotFoundError.
        max_history: history window of each example.
        min_items: widen the time window a year at a time until its 5-core has this many items.
        start: first month of the window, ``"YYYY-MM"`` (default: 12 months before ``end``).
        end: last month of the window, included whole (UTC). D3's own files used the window
            2017-10-01 .. 2018-11-01 in local time: ``start="2017-10", end="2018-10"`` is closest.
        k: the k-core threshold.
        max_words: titles with more words are dropped.
        cache: read / write ``data_dir()/processed/amazon-<category>-h<max_history>-<hash>.npz``.
        progress: show download and parsing progress.

    Example:
        >>> ds = prepare_amazon("Toys_and_Games")  # doctest: +SKIP
        >>> ds.info["window"], ds.describe()  # doctest: +SKIP
    """
    check_params(max_history, k, start, end)
    urls = amazon_urls(category, base_url)
    params = {"source": "amazon", "category": category, "min_items": min_items, "start": start,
              "end": end, "k": k, "max_words": max_words}

    def build() -> Dataset:
        folder = Path(raw_dir) if raw_dir is not None else data_dir() / "raw" / "amazon"
        reviews = fetch_raw(urls["reviews"], folder / f"{category}_5.json.gz",
                            download=download, progress=progress)
        meta = fetch_raw(urls["meta"], folder / f"meta_{category}.json.gz",
                         download=download, progress=progress)
        log, titles = read_amazon(reviews, meta, progress=progress)
        return build_dataset(
            f"amazon-{category}", log, titles, max_history=max_history, min_items=min_items, k=k,
            max_words=max_words, start=start, end=end,
            info={"source": "Amazon Reviews 2018 (Ni, Li & McAuley, EMNLP 2019), 5-core + metadata",
                  "category": category, "files": {"reviews": reviews.name, "meta": meta.name},
                  "urls": urls},
        )

    return cached_dataset(cache_path(f"amazon-{category}", max_history, params), build, cache=cache)
