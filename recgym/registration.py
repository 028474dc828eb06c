"""Environment ids, registered with Gymnasium when ``recgym`` is imported.

Gymnasium 1.x has no plugin entry points, so ``gym.make("recgym:RecGen-Games-v0")`` (which imports
``recgym`` first) or ``import recgym`` then ``gym.make("RecGen-Games-v0")`` are the two ways in.
Entry points are strings, so registering imports nothing heavy.
"""

from __future__ import annotations

ENTRY_POINT = "recgym.envs.recgen:RecGenEnv"
VECTOR_ENTRY_POINT = "recgym.envs.vector:RecGenVectorEnv"

# id -> default keyword arguments (all overridable in gym.make)
ENV_DEFAULTS: dict[str, dict[str, object]] = {
    # Offline, generated: the env for quick starts, tests and CI.
    "RecGen-Synthetic-v0": {"dataset": "synthetic"},
    # Amazon 2018 Video Games. Default: LC-Rec folder with SIDs (found on RECGYM_DATA_PATH);
    # dataset="games" uses titles from the raw Amazon pipeline instead.
    "RecGen-Games-v0": {"dataset": "games-lcrec", "representation": "sid"},
    # Amazon 2018 Toys and Games, titles, from the raw pipeline (`recgym data download toys`).
    "RecGen-Toys-v0": {"dataset": "toys", "representation": "title"},
    # Goodreads, titles, from the SPRec folder (dataset="goodreads" for the raw pipeline).
    "RecGen-Goodreads-v0": {"dataset": "goodreads-sprec", "representation": "title"},
    # Any dataset: pass dataset="path/to/folder" (D3, LC-Rec or SPRec format) or a name.
    "RecGen-v0": {},
}


def register_envs() -> None:
    """Register every RecGen id (idempotent)."""
    import gymnasium as gym

    for env_id, kwargs in ENV_DEFAULTS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=ENTRY_POINT,
            vector_entry_point=VECTOR_ENTRY_POINT,
            kwargs=dict(kwargs),
            disable_env_checker=False,
        )
