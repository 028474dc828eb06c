"""RL learners and the one registry every learner goes through (built-ins and plug-ins alike).

A learner is registered under a name with a factory: a :class:`~agents.learners.base.Learner`
subclass (built from keyword settings by its ``from_settings``, which checks them against its
config dataclass) or any callable ``factory(**settings) -> Learner`` (checked against its
signature). ``recgym train --agent`` and ``recgym bench --agents`` take their choices from here, and
``--plugin FILE`` imports a file that calls :func:`register_learner`.

Example:
    >>> make_learner("riser", group_size=8, oversample=12).config.oversample
    12
    >>> learner_names()[:3]
    ['grpo', 'simpo', 'riser']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from agents.learners.base import (
    Learner,
    RLBatch,
    check_settings,
    first_in_group,
    group_advantages,
    masked_mean,
)
from agents.learners.grpo import GRPO
from agents.learners.riser import RISER
from agents.learners.simpo import SimPO

LearnerFactory = Callable[..., Learner]
"""A :class:`Learner` subclass, or ``factory(**settings) -> Learner`` (e.g. ``group_size=16``)."""

_LEARNERS: dict[str, LearnerFactory] = {}
BUILTIN_LEARNERS: tuple[str, ...] = ()


def register_learner(name: str, factory: LearnerFactory) -> None:
    """Make a learner available by name to :func:`make_learner`, ``recgym train`` and ``recgym bench``.

    A plug-in module calls this when imported (``--plugin my_learner.py``), so user code adds a
    learner without editing the package; the built-in learners are registered the same way below.

    Example:
        >>> class Mine(Learner):
        ...     name = "mine"
        ...     def make_batch(self, policy, rollout): ...
        ...     def loss(self, policy, batch): ...
        >>> register_learner("mine", lambda **settings: Mine())
        >>> make_learner("mine").name
        'mine'
        >>> register_learner("mine", lambda **settings: Mine())
        Traceback (most recent call last):
        ...
        ValueError: a learner named 'mine' is already registered
        >>> unregister_learner("mine")
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"learner names are letters, digits, '_' and '-', got {name!r}")
    if name in _LEARNERS:
        raise ValueError(f"a learner named {name!r} is already registered")
    if not callable(factory):
        raise TypeError(f"the factory of learner {name!r} must be callable, got {type(factory).__name__}")
    _LEARNERS[name] = factory


def unregister_learner(name: str) -> None:
    """Forget a registered plug-in learner (built-in learners stay).

    Example:
        >>> unregister_learner("grpo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 'grpo' is not a registered plug-in learner; registered: [...]
    """
    if name not in _LEARNERS or name in BUILTIN_LEARNERS:
        plugins = sorted(set(_LEARNERS) - set(BUILTIN_LEARNERS))
        raise ValueError(f"{name!r} is not a registered plug-in learner; registered: {plugins}")
    del _LEARNERS[name]


def learner_names() -> list[str]:
    """Names :func:`make_learner` knows: the built-in learners, then registered plug-ins.

    Example:
        >>> learner_names()[:3]
        ['grpo', 'simpo', 'riser']
    """
    return list(_LEARNERS)


def _factory(name: str) -> LearnerFactory:
    if name not in _LEARNERS:
        raise ValueError(f"unknown learner {name!r}: choose one of {learner_names()}")
    return _LEARNERS[name]


def make_learner(name: str, **settings: Any) -> Learner:
    """A learner by name with settings; unknown settings are a ValueError naming the known ones.

    Example:
        >>> make_learner("grpo", group_size=4).rollouts_per_request
        4
        >>> make_learner("grpo", gruop_size=4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: grpo: unknown setting(s) ['gruop_size']; known: [...]
    """
    factory = _factory(name)
    if isinstance(factory, type) and issubclass(factory, Learner):
        learner = factory.from_settings(**settings)
    else:
        _check_signature(name, factory, settings)
        learner = factory(**settings)
    if not isinstance(learner, Learner):
        raise TypeError(f"the factory of learner {name!r} returned {type(learner).__name__}, not a Learner")
    return learner


def budget_settings(name: str, rollouts_per_request: int, group_size: int) -> dict[str, Any]:
    """The settings that give learner ``name`` a budget of ``rollouts_per_request`` samples per request.

    Each learner maps the budget onto its own settings (``Learner.budget_settings``); a plain
    factory may carry a ``budget_settings`` attribute, else it gets ``group_size``.

    Example:
        >>> budget_settings("riser", 8, 6), budget_settings("grpo", 8, 6)
        ({'group_size': 6, 'oversample': 8}, {'group_size': 8})
    """
    factory = _factory(name)
    mapping = getattr(factory, "budget_settings", None)
    if mapping is None:
        return {"group_size": rollouts_per_request}
    return dict(mapping(rollouts_per_request, group_size))


def _check_signature(name: str, factory: LearnerFactory, settings: dict[str, Any]) -> None:
    """The plug-in rule, the same as the built-ins': settings the factory does not take are an error."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {unknown}; known: {sorted(known)}")


for _name, _cls in (("grpo", GRPO), ("simpo", SimPO), ("riser", RISER)):
    register_learner(_name, _cls)
BUILTIN_LEARNERS = tuple(_LEARNERS)

__all__ = ["BUILTIN_LEARNERS", "GRPO", "Learner", "LearnerFactory", "RISER", "RLBatch", "SimPO",
           "budget_settings", "check_settings", "first_in_group", "group_advantages", "learner_names",
           "make_learner", "masked_mean", "register_learner", "unregister_learner"]
