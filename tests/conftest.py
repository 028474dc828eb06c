"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_folder() -> Path | None:
    """The project's real-data folder (``<repo>/../shared/data``, or ``$RECGYM_SHARED_DATA``), or None."""
    override = os.environ.get("RECGYM_SHARED_DATA")
    path = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; tests that use it are skipped when it is absent."""
    path = shared_data_folder()
    if path is None:
        pytest.skip("../shared/data not present: real-data tests need the project's shared data folder")
    return path


@pytest.fixture(scope="module")
def tiny_sid():
    """(task, policy): a 60-item synthetic SID task (train split) and a freshly built tiny policy."""
    from agents.policy import LLMPolicy
    from recgym.data import make_synthetic
    from recgym.envs import RecGenTask

    ds = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    task = RecGenTask(ds, split="train", representation="sid", vocab_size=400)
    return task, LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
