"""Amazon Reviews 2018 (Ni, Li & McAuley, EMNLP 2019): what differs from other raw sources.

Source: https://nijianmo.github.io/amazon/index.html (research use only; cite the paper). Two files
per category: the 5-core reviews ``<Category>_5.json.gz`` (one JSON object per line with
``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``, ...) and the metadata
``meta_<Category>.json.gz`` (one JSON object per line with ``asin``, ``title``, ...).

Raw files are kept in ``data_dir()/raw/amazon/``; :func:`~recgym.data.sources.prepare_raw` caches
the processed dataset as ``data_dir()/processed/amazon-<Category>-h<max_history>-<hash>.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recgym.data.dataset import DataFormatError, Dataset
from recgym.data.protocol import InteractionLog, read_json_lines, required
from recgym.data.sources.base import RawSource, prepare_raw

__all__ = ["AMAZON_BASE_URL", "AMAZON_CATEGORIES", "AMAZON_URLS", "SOURCE", "amazon_urls", "prepare_amazon",
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

_LAYOUT = {"reviews": "categoryFilesSmall/{subset}_5.json.gz", "meta": "metaFiles2/meta_{subset}.json.gz"}

#: category -> {"reviews": 5-core reviews URL, "meta": metadata URL}
AMAZON_URLS: dict[str, dict[str, str]] = {
    category: {kind: f"{AMAZON_BASE_URL}/{path.format(subset=category)}" for kind, path in _LAYOUT.items()}
    for category in AMAZON_CATEGORIES
}


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


def _parse(paths: Mapping[str, Path], *, progress: bool = True) -> tuple[InteractionLog, dict[str, str]]:
    return read_amazon(paths["reviews"], paths["meta"], progress=progress)


SOURCE = RawSource(
    name="amazon",
    label="Amazon 2018",
    citation="Amazon Reviews 2018 (Ni, Li & McAuley, EMNLP 2019), 5-core + metadata",
    subset_arg="category",
    subsets=AMAZON_CATEGORIES,
    base_url=AMAZON_BASE_URL,
    url_env="RECGYM_AMAZON_URL",
    layout=_LAYOUT,
    parse=_parse,
    default_end="2018-11",  # the end of the 2018 release, as D3 used it
)


def amazon_urls(category: str, base_url: str | None = None) -> dict[str, str]:
    """The two URLs of a category, under ``base_url`` or ``$RECGYM_AMAZON_URL`` when given.

    A mirror must keep the upstream layout (``categoryFilesSmall/`` and ``metaFiles2/``).

    Example:
        >>> amazon_urls("Video_Games", "http://127.0.0.1:8000/amazon")["meta"]
        'http://127.0.0.1:8000/amazon/metaFiles2/meta_Video_Games.json.gz'
    """
    return SOURCE.urls(category, base_url)


def prepare_amazon(category: str, **kwargs: Any) -> Dataset:
    """An Amazon Reviews 2018 category processed by the D3 protocol (cached):
    ``prepare_raw("amazon", category, **kwargs)``, see :func:`~recgym.data.sources.prepare_raw`
    for the options (``end`` defaults to ``"2018-11"``).

    Items are re-indexed 0..N-1 by sorted ASIN (``catalogue.keys``), users are reviewerIDs by first
    appearance (``Dataset.users``). D3's own files used the window 2017-10-01 .. 2018-11-01 in
    local time: ``start="2017-10", end="2018-10"`` is closest.

    Example:
        >>> ds = prepare_amazon("Toys_and_Games")  # doctest: +SKIP
        >>> ds.info["window"], ds.describe()  # doctest: +SKIP
    """
    return prepare_raw(SOURCE, category, **kwargs)
