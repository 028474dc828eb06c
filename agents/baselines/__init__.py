"""Classic recommenders scored by the same protocol as the LLM agents, behind one small registry.

A ranker has ``fit(train, num_items, valid=None) -> self`` and ``rank(examples, k) -> (n, k)`` item
ids; ``describe()`` (optional) returns its settings for results files. ``recgym eval --agent`` and
``recgym bench --agents`` take their choices from :func:`ranker_names`.

Example:
    >>> from recgym.data import make_synthetic
    >>> ds = make_synthetic(num_items=300, num_users=100, seed=0)
    >>> make_ranker("popularity").fit(ds.train, 300).rank(ds.test, 3).shape[1]
    3
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.baselines.classic import PopularityRecommender, TransitionRecommender
from agents.baselines.sasrec import SASRecConfig, SASRecRecommender


@dataclass(frozen=True)
class RankerEntry:
    """A registered ranker: ``factory(seed=..., **settings)`` and whether its result depends on the seed."""

    factory: Callable[..., Any]
    seeded: bool = False


_RANKERS: dict[str, RankerEntry] = {}


def register_ranker(name: str, factory: Callable[..., Any], *, seeded: bool = False) -> None:
    """Make a classic recommender available by name (``factory(seed=0, **settings)`` returns it).

    Example:
        >>> register_ranker("popular2", lambda seed=0: PopularityRecommender())
        >>> "popular2" in ranker_names()
        True
        >>> unregister_ranker("popular2")
    """
    if name in _RANKERS:
        raise ValueError(f"a ranker named {name!r} is already registered")
    _RANKERS[name] = RankerEntry(factory, seeded)


def unregister_ranker(name: str) -> None:
    """Forget a registered ranker."""
    if name not in _RANKERS:
        raise ValueError(f"{name!r} is not a registered ranker; registered: {ranker_names()}")
    del _RANKERS[name]


def ranker_names() -> list[str]:
    """Names :func:`make_ranker` knows.

    Example:
        >>> ranker_names()[:3]
        ['popularity', 'transition', 'sasrec']
    """
    return list(_RANKERS)


def ranker_entry(name: str) -> RankerEntry:
    """The registry entry of ``name`` (a ValueError naming the choices when unknown)."""
    if name not in _RANKERS:
        raise ValueError(f"unknown ranker {name!r}: choose one of {ranker_names()}")
    return _RANKERS[name]


def make_ranker(name: str, seed: int = 0, **settings: Any) -> Any:
    """A classic recommender by name, seeded where it has anything to seed.

    Example:
        >>> type(make_ranker("sasrec", seed=1, hidden=32)).__name__
        'SASRecRecommender'
    """
    return ranker_entry(name).factory(seed=seed, **settings)


def _no_settings(cls: type) -> Callable[..., Any]:
    def factory(seed: int = 0) -> Any:  # nothing to seed: counts are deterministic
        return cls()

    return factory


register_ranker("popularity", _no_settings(PopularityRecommender))
register_ranker("transition", _no_settings(TransitionRecommender))
register_ranker("sasrec", lambda seed=0, **settings: SASRecRecommender(seed=seed, **settings), seeded=True)

__all__ = ["PopularityRecommender", "RankerEntry", "SASRecConfig", "SASRecRecommender",
           "TransitionRecommender", "make_ranker", "ranker_entry", "ranker_names", "register_ranker",
           "unregister_ranker"]
