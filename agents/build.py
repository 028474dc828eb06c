"""Building what commands run on: tasks from env ids, policies, selections (used by the CLI and bench).

The library side of the command line: :mod:`agents.cli` parses arguments and calls these;
:mod:`agents.bench` calls them too. Nothing here imports the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def make_task(env_id: str, split: str, overrides: dict[str, Any], tokenizer: Any = None) -> Any:
    """The :class:`~recgym.envs.task.RecGenTask` behind a registered env id (its kwargs, then ``overrides``).

    Example:
        >>> task = make_task("RecGen-Synthetic-v0", "valid", {"representation": "sid", "vocab_size": 400,
        ...                  "dataset_kwargs": {"num_items": 300, "num_users": 100}})
        >>> task.split, task.representation
        ('valid', 'sid')
    """
    import gymnasium as gym

    import recgym  # noqa: F401  (registers the ids)
    from recgym.envs.task import RecGenTask

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise ValueError(f"--env: {err}") from err
    kwargs = {**spec.kwargs, **overrides, "split": split}
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    return RecGenTask(**kwargs)


def dataset_name(env_id: str, overrides: dict[str, Any] | None = None) -> str:
    """The dataset an env id (with task ``overrides``) reads.

    Example:
        >>> dataset_name("RecGen-Games-v0"), dataset_name("RecGen-Games-v0", {"dataset": "games"})
        ('games-lcrec', 'games')
    """
    import gymnasium as gym

    import recgym  # noqa: F401

    if overrides and overrides.get("dataset"):
        return str(overrides["dataset"])
    return str(gym.spec(env_id).kwargs.get("dataset", "synthetic"))


def build_policy(
    items: Any, *, model: str | None = None, preset: str = "tiny", seed: int = 0, device: str | None = None,
) -> Any:
    """An :class:`~agents.policy.LLMPolicy`: a pretrained causal LM (``model``) or a fresh preset.

    Example:
        >>> # policy = build_policy(task.items, preset="tiny", seed=0)
    """
    from agents.policy import LLMPolicy

    if model:
        return LLMPolicy.from_pretrained(model, items=items, device=device)
    return LLMPolicy.from_config(preset, items, seed=seed, device=device)


def load_subset(path: str, num_requests: int) -> tuple[np.ndarray, bool]:
    """``(rows in training order, curriculum?)`` from a ``recgym select`` file, checked against the split.

    Example:
        >>> load_subset("missing.json", 10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --subset missing.json: not a selection written by `recgym select` (...)
    """
    try:
        selection = json.loads(Path(path).read_text())
        order = np.asarray(selection["order"], dtype=np.int64)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"--subset {path}: not a selection written by `recgym select` ({err})") from err
    if len(order) == 0 or order.min() < 0 or order.max() >= num_requests:
        raise ValueError(f"--subset {path}: rows must be in 0..{num_requests - 1} of the training split")
    return order, bool(selection.get("curriculum", False))


def write_json(path: str | Path | None, results: dict[str, Any]) -> Path | None:
    """Write ``results`` as indented JSON atomically and say where (nothing when ``path`` is None).

    Example:
        >>> write_json(None, {"a": 1}) is None
        True
    """
    if not path:
        return None
    from agents.tracking import write_atomically

    written = write_atomically(Path(path), json.dumps(results, indent=2))
    print(f"wrote {written}")
    return written


__all__ = ["build_policy", "dataset_name", "load_subset", "make_task", "write_json"]
