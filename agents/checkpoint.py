"""Atomic checkpoints: a folder written under a temporary name, then renamed.

Weights go through ``save_pretrained`` (safetensors); optimizer, scheduler, step and RNG states go
to ``trainer_state.pt``, read back with ``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors / primitives (safe for weights_only loading)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])


def write_folder_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Let ``write`` fill ``<path>.tmp``, then swap it in for ``path`` (the old one kept as ``.old``
    until the swap is done), so an interruption never leaves a half-written ``path``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     out = write_folder_atomically(Path(d) / "x", lambda p: (p / "f").write_text("1"))
        ...     (out / "f").read_text()
        '1'
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def save_checkpoint(path: str | os.PathLike[str], policy: Any, trainer_state: dict[str, Any]) -> Path:
    """Write ``policy.save_pretrained`` + trainer state into ``path`` atomically.

    Example:
        >>> # save_checkpoint("runs/x/checkpoint", policy, {"step": 10, "optimizer": opt.state_dict()})
    """
    def write(tmp: Path) -> None:
        policy.save_pretrained(tmp)
        torch.save(trainer_state, tmp / STATE_FILE)

    return write_folder_atomically(path, write)


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The trainer state of a checkpoint folder (tensors and primitives only)."""
    return torch.load(Path(path) / STATE_FILE, weights_only=True)


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint at ``path`` (or the previous one if a save was interrupted)."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / STATE_FILE).exists():
            return candidate
    return None


def save_training(
    path: str | os.PathLike[str], policy: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
    state: dict[str, Any], config: dict[str, Any],
) -> Path:
    """Atomic checkpoint of a training loop: weights, optimizer, scheduler, RNG states, loop state."""
    return save_checkpoint(path, policy, {
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
        "state": state, "config": config})


def restore_training(
    path: str | os.PathLike[str], policy: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
) -> dict[str, Any] | None:
    """Resume from :func:`save_training`'s folder if one is there: returns the loop state, or None.

    Example:
        >>> # state = restore_training(run / "checkpoint", policy, optimizer, scheduler) or fresh_state
    """
    found = find_checkpoint(path)
    if found is None:
        return None
    saved = load_trainer_state(found)
    load_weights(policy, found)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return saved["state"]


def load_weights(policy: Any, folder: str | os.PathLike[str]) -> None:
    """Copy the weights saved in ``folder`` (``save_pretrained``) into ``policy.model`` in place."""
    fresh = type(policy.model).from_pretrained(folder)
    policy.model.load_state_dict(fresh.state_dict())

