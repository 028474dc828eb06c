"""Atomic checkpoints: a folder written under a temporary name, then renamed.

Weights go through ``save_pretrained`` (safetensors); optimizer, scheduler, step and RNG states go
to ``trainer_state.pt``, read back with ``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.training.runs import RESTART_HINT, CheckpointError, DiskFullError

STATE_FILE = "trainer_state.pt"
FULL_DISK_BYTES = 64 << 20  # free space below which a failed write is taken for a full disk


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

    A full disk while writing removes ``<path>.tmp`` and raises :class:`~agents.training.runs.DiskFullError`
    ("no space left on FOLDER"), ``path`` as it was.

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
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except Exception as err:
        if not _disk_full(err, path.parent):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # the space it took; the previous ``path`` is untouched
        kept = f"the previous {path.name} is kept" if path.exists() else f"nothing was written to {path}"
        raise DiskFullError(
            f"no space left on {path.parent} while writing {path.name} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}): {kept}. Free some space (or choose an --out "
            "on a disk with room) and rerun the same command: it resumes from the last checkpoint") from err
    old = path.with_name(path.name + ".old")
    if old.exists() and not path.exists():  # an earlier swap was interrupted: ``old`` is the complete one
        old.rename(path)
    elif old.exists():
        shutil.rmtree(old)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of disk space (or quota).

    OSError says so by its errno, safetensors and others by the OS's message; torch's zip writer
    says only "unexpected pos" or "file write failed", so then the free space decides.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    if "No space left on device" in text or "Disk quota exceeded" in text or "os error 28" in text:
        return True
    if "unexpected pos" in text or "file write failed" in text:
        try:
            return shutil.disk_usage(folder).free < FULL_DISK_BYTES
        except OSError:
            return False
    return False


def save_checkpoint(
    path: str | os.PathLike[str], policy: Any, trainer_state: dict[str, Any],
    model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``policy.save_pretrained`` + trainer state into ``path`` atomically.

    ``model_state``: the weights to write instead of the model's own (the full weights gathered
    from a sharded model: :func:`agents.parallel.fsdp.full_state_dict`).

    Example:
        >>> # save_checkpoint("runs/x/checkpoint", policy, {"step": 10, "optimizer": opt.state_dict()})
    """
    def write(tmp: Path) -> None:
        policy.save_pretrained(tmp, state_dict=model_state)
        torch.save(trainer_state, tmp / STATE_FILE)

    return write_folder_atomically(path, write)


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The trainer state of a checkpoint folder (tensors and primitives only).

    A missing, truncated or foreign file is a :class:`~agents.training.runs.CheckpointError` naming it.
    """
    file = Path(path) / STATE_FILE
    if not file.exists():
        raise CheckpointError(f"{file} is missing: the checkpoint in {Path(path)} is incomplete and the run "
                              f"cannot resume from it; {RESTART_HINT}")
    try:
        state = torch.load(file, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for damage
        raise CheckpointError(f"{file} is damaged and cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); {RESTART_HINT}") from err
    keys = ("optimizer", "scheduler", "rng", "state")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{file} is not a trainer state written by recgym (no {missing}); "
                              f"{RESTART_HINT}")
    return state


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint at ``path`` (or the previous one if a save was interrupted), or None.

    A ``path`` folder without its trainer state (and no complete previous one) is a
    :class:`~agents.training.runs.CheckpointError`: resuming from step 0 would silently redo the run.

    Example:
        >>> import tempfile
        >>> find_checkpoint(Path(tempfile.mkdtemp()) / "checkpoint") is None
        True
    """
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / STATE_FILE).exists():
            return candidate
    if path.exists():
        raise CheckpointError(f"{path / STATE_FILE} is missing: the checkpoint in {path} is incomplete and "
                              f"the run cannot resume from it; {RESTART_HINT}")
    return None


def save_training(
    path: str | os.PathLike[str], policy: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
    state: dict[str, Any], config: dict[str, Any], *, model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Atomic checkpoint of a training loop: weights, optimizer, scheduler, RNG states, loop state.

    Under FSDP (:mod:`agents.parallel.fsdp`) every rank first gathers ``model_state``
    (:func:`~agents.parallel.fsdp.full_state_dict`) and ``optimizer_state``
    (:func:`~agents.parallel.fsdp.full_optimizer_state`), then rank 0 writes them: the files are one
    process's.

    Example:
        >>> # save_training(run / "checkpoint", policy, optimizer, scheduler, state, asdict(cfg))
    """
    return save_checkpoint(path, policy, {
        "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
        "scheduler": scheduler.state_dict(), "rng": rng_state(), "state": state, "config": config},
        model_state)


def restore_training(
    path: str | os.PathLike[str], policy: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
    *, weights: bool = True,
) -> dict[str, Any] | None:
    """Resume from :func:`save_training`'s folder if one is there: returns the loop state, or None.

    ``weights=False`` leaves the weights alone (loaded before the model was sharded, as the loops
    do under FSDP); sharded optimizer states get their shard of the saved full moments
    (:func:`agents.parallel.fsdp.load_optimizer_state`).

    Example:
        >>> # state = restore_training(run / "checkpoint", policy, optimizer, scheduler) or fresh_state
    """
    from agents.parallel.fsdp import load_optimizer_state

    found = find_checkpoint(path)
    if found is None:
        return None
    saved = load_trainer_state(found)
    if weights:
        load_weights(policy, found)
    try:
        load_optimizer_state(optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{found / STATE_FILE} does not fit this run's optimizer ({err}); "
                              f"{RESTART_HINT}") from err
    return saved["state"]


def load_weights(policy: Any, folder: str | os.PathLike[str]) -> None:
    """Copy the weights saved in ``folder`` (``save_pretrained``) into ``policy.model`` in place.

    A missing, damaged or changed file (``config.json``, the weights: :mod:`agents.training.saved`) is a
    :class:`~agents.training.runs.CheckpointError` naming it, raised before any model is built.
    """
    from agents.training.saved import check_config_fits_model, check_files, weights_files

    folder = Path(folder)
    try:
        if hasattr(policy, "load_weights"):  # an LLMPolicy: its adapters (LoRA, new token rows) too
            policy.load_weights(folder, remedy=RESTART_HINT)
        else:
            check_files(folder, ["config.json", *weights_files(folder)], None, RESTART_HINT)
            check_config_fits_model(folder, policy.model, RESTART_HINT)
            fresh = type(policy.model).from_pretrained(folder)
            policy.model.load_state_dict(fresh.state_dict())
    except CheckpointError:
        raise  # names the file already
    except Exception as err:  # safetensors, OSError, size mismatches: all mean "not these weights"
        raise CheckpointError(f"{weights_file(folder)}: the weights cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); {RESTART_HINT}") from err


def weights_file(folder: str | os.PathLike[str]) -> Path:
    """The weights file of a ``save_pretrained`` folder (the first shard or index when sharded).

    Example:
        >>> weights_file("runs/x/best")
        PosixPath('runs/x/best/model.safetensors')
    """
    folder = Path(folder)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (folder / name).exists():
            return folder / name
    shards = sorted(folder.glob("model-*.safetensors"))
    return shards[0] if shards else folder / "model.safetensors"
