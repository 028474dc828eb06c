"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real-data folder (``<repo>/../shared/data``, or ``$RECGYM_SHARED_DATA``).

    Tests that use it are skipped when the folder is absent.
    """
    override = os.environ.get("RECGYM_SHARED_DATA")
    path = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not present: real-data tests need the project's shared data folder")
    return path
