"""Backward-compatible names for the Amazon Reviews 2018 source, which lives in
:mod:`recgym.data.sources.amazon` (its pipeline is :func:`recgym.data.sources.prepare_raw`).

Example:
    >>> from recgym.data.amazon import amazon_urls
    >>> amazon_urls("Video_Games", "http://127.0.0.1:8000/a")["reviews"]
    'http://127.0.0.1:8000/a/categoryFilesSmall/Video_Games_5.json.gz'
"""

from __future__ import annotations

from recgym.data.sources.amazon import (
    AMAZON_BASE_URL,
    AMAZON_CATEGORIES,
    AMAZON_URLS,
    amazon_urls,
    prepare_amazon,
    read_amazon,
)

__all__ = ["AMAZON_BASE_URL", "AMAZON_CATEGORIES", "AMAZON_URLS", "amazon_urls", "prepare_amazon",
           "read_amazon"]
