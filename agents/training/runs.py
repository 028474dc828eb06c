"""Run folders that never lie: what a run is (its fingerprint), who holds it (a lock), whether it resumes.

A run folder (``recgym sft --out X``, ``recgym train``'s ``X/sft`` and ``X/rl``, the bench's
``sft/`` and ``runs/<agent>-seed<s>/``) holds, beside its checkpoint, best weights and logs:

* ``fingerprint.json``: everything that determines the run's result, written when the run starts:
  the training config (every field but ``progress`` and ``fsdp``), the learner and its settings, the data
  (the catalogue's items, titles / SIDs and representation, the item tokenization, the train and
  valid examples), the request sampler, the starting weights (SHA-256 of every tensor, dtype and
  the model's config), the seed, plus what the caller adds (env id, task options, model name).
  A rerun into the folder resumes only when its fingerprint is the same; otherwise
  :class:`RunMismatchError` lists the differences (``key: old -> new``) and the ways out:
  ``--restart`` (``restart=True``) to start over in that folder, or another ``--out``.
  The validation cadence and sample (``eval_every``, ``eval_requests``, ``beam``, ``metric``,
  ``patience``) are part of it: they choose the best weights and when training stops. Progress
  bars, the folder's path and the device are not.
* ``run.lock``: created exclusively (``O_EXCL``) while a process uses the folder, holding its pid
  and host; a second run gets :class:`RunLockedError` naming the folder and that pid. A lock whose
  process is gone (same host) is stale and taken over.

Also here: :class:`CheckpointError` (a damaged or incomplete checkpoint), :class:`DivergedError`
(a non-finite loss, gradient norm or weights) and the catalogue check where a saved policy meets a
task (:func:`check_policy_task`, :class:`CatalogueMismatchError`).

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> with open_run(run, {"config": {"lr": 1e-4}}):
    ...     pass
    >>> with open_run(run, {"config": {"lr": 5e-3}}):  # doctest: +ELLIPSIS
    ...     pass
    Traceback (most recent call last):
    ...
    agents.training.runs.RunMismatchError: .../run holds a run with other settings:
      config.lr: 0.0001 -> 0.005
    ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FINGERPRINT_FILE = "fingerprint.json"
LOCK_FILE = "run.lock"
# What a training loop writes into its folder; ``--restart`` removes these (and their .tmp / .old
# twins of an interrupted atomic write) and nothing else.
RUN_OUTPUTS = ("checkpoint", "best", "reference", "metrics.jsonl", "tensorboard", FINGERPRINT_FILE)
# Config fields that do not change a run's result (FSDP: the same steps up to float summation order,
# and the same checkpoint files, so a run may resume with or without it).
NOT_IN_FINGERPRINT = ("progress", "fsdp")
RESTART_HINT = "start over in this folder with --restart (restart=True), or use another --out (run_dir)"


class RunError(RuntimeError):
    """A run cannot start or continue; the message names the folder or file, what is wrong and the remedy.

    Example:
        >>> issubclass(CheckpointError, RunError) and issubclass(RunLockedError, RunError)
        True
    """


class RunMismatchError(RunError):
    """The run folder holds a run with other settings (the message lists them, ``key: old -> new``)."""


class RunLockedError(RunError):
    """Another live process uses the run folder (the message names the folder and its pid)."""


class CheckpointError(RunError):
    """A checkpoint is damaged or incomplete (the message names the file and the remedy)."""


class DiskFullError(RunError):
    """The disk filled up while a checkpoint or saved folder was written; the previous one is kept."""


class RunFolderError(RunError):
    """A run folder (``--out``) cannot be created or written (a file in its path, no permission)."""


class LearnerError(RunError, TypeError):
    """A learner (a plug-in's, say) returned something the training loop cannot use; the message names
    the learner and what it must return. A TypeError too, and a :class:`RunError` for the CLI."""


class DivergedError(RunError):
    """Training produced a non-finite loss, gradient norm or weights; nothing non-finite was saved.

    ``flag`` is the command-line option of the learning rate the hint names (``--lr``;
    ``recgym train``'s SFT stage says ``--sft-lr``): :meth:`with_flag` rewrites it.
    """

    def __init__(self, what: str, value: float, step: int, lr: float, saved: str, flag: str = "--lr") -> None:
        self.what, self.value, self.step, self.lr, self.saved, self.flag = what, value, step, lr, saved, flag
        super().__init__(f"training diverged at step {step}: the {what} is {value} (not finite). {saved} "
                         f"Lower the learning rate ({flag}, now {lr:g}) and start over with --restart.")

    def with_flag(self, flag: str) -> DivergedError:
        """The same error naming another learning-rate option.

        Example:
            >>> "--sft-lr" in str(DivergedError("loss", float("nan"), 3, 1.0, "").with_flag("--sft-lr"))
            True
        """
        return DivergedError(self.what, self.value, self.step, self.lr, self.saved, flag)


class CatalogueMismatchError(ValueError):
    """A saved policy meets a task over another catalogue or representation (item ids would not agree)."""


# -- fingerprints ------------------------------------------------------------------------------------


def _sha(*parts: bytes | str | np.ndarray) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            h.update(f"{part.dtype.str}{part.shape}".encode())
            part = part.tobytes()
        elif isinstance(part, str):
            part = part.encode("utf-8", "surrogatepass")
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def catalogue_fingerprint(catalogue: Any, representation: str) -> dict[str, Any]:
    """What identifies a catalogue for a policy: item count, representation, SHA-256 of titles and SIDs.

    Item ids are positions, so the same titles in another order are another catalogue.

    Example:
        >>> from recgym.data import Catalogue
        >>> a = catalogue_fingerprint(Catalogue(2, titles=["A", "B"]), "title")
        >>> a["items"], a == catalogue_fingerprint(Catalogue(2, titles=["B", "A"]), "title")
        (2, False)
    """
    titles = json.dumps(list(catalogue.titles)) if catalogue.titles is not None else "none"
    sids = np.asarray(catalogue.sids, dtype="<i4") if catalogue.sids is not None else "none"
    return {"items": int(catalogue.num_items), "representation": representation,
            "sha256": _sha(str(int(catalogue.num_items)), titles, sids)}


def items_fingerprint(items: Any) -> dict[str, Any]:
    """An :class:`~recgym.items.ItemTokenizer`: its catalogue plus how items and prompts are tokenized.

    Example:
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=400,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 50})
        >>> sorted(items_fingerprint(task.items))
        ['catalogue', 'tokens_sha256']
    """
    tokenizer = items.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    lengths = np.asarray([len(s) for s in items.sequences], dtype=np.int64)
    flat = np.concatenate(items.sequences) if len(items.sequences) else np.zeros(0, np.int64)
    template = dataclasses.asdict(items.template) if dataclasses.is_dataclass(items.template) else str(
        items.template)
    return {"catalogue": catalogue_fingerprint(items.catalogue, items.representation),
            "tokens_sha256": _sha(vocab, json.dumps(template, sort_keys=True), lengths,
                                  flat.astype(np.int64))}


def task_fingerprint(task: Any) -> dict[str, Any]:
    """A :class:`~recgym.envs.task.RecGenTask`'s requests and rewards (items: :func:`items_fingerprint`).

    Example:
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", split="valid", representation="sid", vocab_size=400,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 50})
        >>> task_fingerprint(task)["split"]
        'valid'
    """
    ex = task.examples
    reward_fn = task.reward_fn
    return {"split": task.split, "requests": int(task.num_requests), "max_history": int(task.max_history),
            "examples_sha256": _sha(np.asarray(ex.history), np.asarray(ex.history_len),
                                    np.asarray(ex.target)),
            "hit_reward": task.hit_reward, "miss_reward": task.miss_reward,
            "reward_fn": None if reward_fn is None else getattr(reward_fn, "__qualname__", repr(reward_fn)),
            "max_prompt_len": int(task.max_prompt_len),
            # the default reward is left out, so that runs recorded before rewards were options resume
            **({"reward": task.reward} if task.reward != "hit" else {})}


def weights_fingerprint(model: Any) -> dict[str, Any]:
    """The starting point of a run: SHA-256 over every tensor of ``model.state_dict()``, dtype, config.

    Example:
        >>> import torch
        >>> weights_fingerprint(torch.nn.Linear(2, 1))["dtype"]
        'float32'
    """
    import torch

    h = hashlib.sha256()
    dtypes = set()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        dtypes.add(str(t.dtype).removeprefix("torch."))
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    out: dict[str, Any] = {"dtype": ",".join(sorted(dtypes)), "weights_sha256": h.hexdigest()}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        skip = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}
        out["model"] = _jsonable({k: v for k, v in config.to_dict().items() if k not in skip})
    return out


def sampler_fingerprint(sampler: Any) -> dict[str, Any] | None:
    """A request sampler's class and attributes (arrays by SHA-256); None for the loop's default.

    Example:
        >>> class Fixed:
        ...     def __init__(self): self.order, self.batch_size = np.arange(3), 2
        >>> sorted(sampler_fingerprint(Fixed()))
        ['batch_size', 'class', 'order']
    """
    if sampler is None:
        return None
    out: dict[str, Any] = {"class": type(sampler).__qualname__}
    for key, value in sorted(vars(sampler).items()):
        out[key] = _sha(np.asarray(value)) if isinstance(value, np.ndarray) else _jsonable(value)
    return out


def config_fingerprint(config: Any) -> dict[str, Any]:
    """A config dataclass's fields, except those that do not change the result (``progress``, ``fsdp``).

    Example:
        >>> from agents.configs import RLConfig
        >>> "progress" in config_fingerprint(RLConfig()), config_fingerprint(RLConfig())["lr"]
        (False, 0.0001)
    """
    return {k: v for k, v in _jsonable(dataclasses.asdict(config)).items() if k not in NOT_IN_FINGERPRINT}


def run_fingerprint(
    kind: str, config: Any, train: Any, valid: Any = None, *, policy: Any = None, learner: Any = None,
    sampler: Any = None, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that determines a training run's result (see the module docstring).

    ``policy`` None leaves the ``start`` out (a check made before the start exists: see
    :func:`check_run_folder`).

    Example:
        >>> # fp = run_fingerprint("rl", cfg, train, valid, policy=policy, learner=learner)
    """
    out: dict[str, Any] = {"kind": kind, "config": config_fingerprint(config)}
    if learner is not None:
        out["learner"] = _jsonable(learner.describe())
    out["data"] = {"items": items_fingerprint(train.items), "train": task_fingerprint(train),
                   "valid": task_fingerprint(valid) if valid is not None else None}
    if kind == "rl":
        out["sampler"] = sampler_fingerprint(sampler)
    if policy is not None:
        out["start"] = {**weights_fingerprint(policy.model), "objective": getattr(policy, "objective", None)}
    if extra:
        out["run"] = _jsonable(dict(extra))
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return repr(value)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": leaf}`` (lists and scalars are leaves).

    Example:
        >>> flatten({"config": {"lr": 0.1}, "kind": "rl"})
        {'config.lr': 0.1, 'kind': 'rl'}
    """
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 70 else text[:67] + "..."


_ABSENT = object()


def differences(old: Mapping[str, Any], new: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every leaf that differs (keys under a prefix in ``skip`` are ignored).

    Example:
        >>> differences({"config": {"lr": 0.1, "steps": 5}}, {"config": {"lr": 0.2, "steps": 5}})
        ['config.lr: 0.1 -> 0.2']
    """
    a, b = flatten(_jsonable(dict(old))), flatten(_jsonable(dict(new)))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == s or key.startswith(s + ".") for s in skip):
            continue
        x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if x != y:
            out.append(f"{key}: {_show(x)} -> {_show(y)}")
    return out


# -- the run folder ----------------------------------------------------------------------------------


def _has_outputs(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.split(".tmp")[0].split(".old")[0] in RUN_OUTPUTS
                  and p.name != FINGERPRINT_FILE) if run.is_dir() else []


def read_fingerprint(run: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The fingerprint a run folder records, or None when it has none.

    Example:
        >>> import tempfile
        >>> read_fingerprint(tempfile.mkdtemp()) is None
        True
    """
    path = Path(run) / FINGERPRINT_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunMismatchError(f"{path} is damaged ({err}): the run's settings cannot be checked; "
                               f"{RESTART_HINT}") from err


def check_run_folder(
    run: str | os.PathLike[str], fingerprint: Mapping[str, Any], *, restart: bool = False,
    skip: tuple[str, ...] = (),
) -> bool:
    """Raise :class:`RunMismatchError` unless ``run`` is empty, restarting, or holds this same run.

    Returns True when the folder holds a run to resume (same fingerprint). ``skip`` leaves
    prefixes out of the comparison (e.g. ``("start",)`` before the starting weights exist).

    Example:
        >>> import tempfile
        >>> check_run_folder(Path(tempfile.mkdtemp()) / "new", {"config": {}})
        False
    """
    run = Path(run)
    if restart or not run.exists():
        return False
    old = read_fingerprint(run)
    if old is None:
        outputs = _has_outputs(run)
        if outputs:
            raise RunMismatchError(
                f"{run} holds a run ({', '.join(outputs)}) without {FINGERPRINT_FILE} (written by an older "
                f"recgym, or the file was removed), so its settings cannot be checked: {RESTART_HINT}")
        return False
    diff = differences(old, fingerprint, skip)
    if diff:
        shown = diff[:25] + ([f"... and {len(diff) - 25} more"] if len(diff) > 25 else [])
        lines = "\n".join(f"  {line}" for line in shown)
        raise RunMismatchError(f"{run} holds a run with other settings:\n{lines}\n"
                               f"Rerun with the same settings to resume it, {RESTART_HINT}.")
    return True


def clear_run(run: str | os.PathLike[str]) -> None:
    """Remove what a training loop wrote into ``run`` (:data:`RUN_OUTPUTS` and their .tmp / .old twins).

    Files the loop did not write are left alone.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = (run / "metrics.jsonl").write_text("{}")
        >>> _ = (run / "notes.txt").write_text("mine")
        >>> clear_run(run)
        >>> sorted(p.name for p in run.iterdir())
        ['notes.txt']
    """
    run = Path(run)
    for name in RUN_OUTPUTS:
        for path in (run / name, run / f"{name}.tmp", run / f"{name}.old"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


@contextlib.contextmanager
def open_run(
    run: str | os.PathLike[str], fingerprint: Mapping[str, Any], *, restart: bool = False
) -> Iterator[bool]:
    """Lock ``run``, check (or, with ``restart``, clear) it and record ``fingerprint``; yields "resuming?".

    Example:
        >>> # with open_run("runs/x", run_fingerprint("sft", cfg, train), restart=False) as resuming: ...
    """
    run = Path(run)
    with RunLock(run):
        if restart:
            clear_run(run)
        resuming = check_run_folder(run, fingerprint)
        if not resuming:
            path = run / FINGERPRINT_FILE
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(_jsonable(dict(fingerprint)), indent=2), encoding="utf-8")
            os.replace(tmp, path)
        yield resuming


@contextlib.contextmanager
def lock_on_main(folder: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold ``folder``'s :class:`RunLock` for the block on rank 0 alone; yields ``is_main()``.

    Under ``torchrun`` a failure to lock (the folder in use) reaches every rank, and the other ranks
    start the block only once rank 0 holds the lock. A single process simply holds the lock.

    Example:
        >>> # with lock_on_main("runs/bench") as main: ...
    """
    from agents.parallel import distributed as dist

    with contextlib.ExitStack() as stack:
        with dist.on_main(f"locking {folder}") as main:
            if main:
                stack.enter_context(RunLock(folder))
        yield main


@contextlib.contextmanager
def open_run_on_main(
    run: str | os.PathLike[str], fingerprint: Mapping[str, Any], *, restart: bool = False
) -> Iterator[bool]:
    """:func:`open_run` on rank 0 alone (lock, check, fingerprint), with its "resuming?" on every rank.

    Under ``torchrun`` (:mod:`agents.parallel.distributed`) only rank 0 locks and writes the run folder; an
    error there (another run's folder, a held lock) reaches every rank, and the other ranks start
    only once rank 0 has cleared (``restart``) or checked the folder, so they may read its
    checkpoint when resuming. A single process is exactly :func:`open_run`.

    Example:
        >>> # with open_run_on_main("runs/x", run_fingerprint("sft", cfg, train)) as resuming: ...
    """
    from agents.parallel import distributed as dist

    if not dist.is_distributed():
        with open_run(run, fingerprint, restart=restart) as resuming:
            yield resuming
        return
    with contextlib.ExitStack() as stack:
        resuming = False
        with dist.on_main(f"opening the run folder {run}") as main:
            if main:
                resuming = stack.enter_context(open_run(run, fingerprint, restart=restart))
        yield bool(dist.broadcast_object(resuming))


# -- the lock ----------------------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on a folder: ``<folder>/run.lock``, created with ``O_EXCL``, holds pid and host.

    Re-entrant within a process (a command may lock its ``--out`` and the loop inside it the same
    folder). A lock whose pid is no longer running on this host is stale and is taken over. A
    folder the lock had to create is removed again when nothing else was written into it.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with RunLock(folder):
        ...     (folder / LOCK_FILE).exists()
        True
        >>> (folder / LOCK_FILE).exists()
        False
    """

    _held: dict[str, int] = {}

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._created = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @property
    def _key(self) -> str:
        return str(self.path.resolve())

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming the folder and the holder's pid
        (:class:`RunFolderError` when the folder cannot be created or written)."""
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file in the path (NotADirectoryError, FileExistsError), no permission, ...
            raise self._unwritable(err) from err
        key = self._key
        if key in RunLock._held:
            RunLock._held[key] += 1
            return
        for _ in range(5):
            if self._create():
                RunLock._held[key] = 1
                return
            owner = self._owner()
            if owner is None:  # being written this instant, or unreadable: see again shortly
                time.sleep(0.05)
                owner = self._owner()
                if owner is None:
                    raise RunLockedError(f"{self.folder} is locked by {self.path}, which cannot be read: "
                                         f"if no run uses this folder, delete {self.path}")
            if self._alive(owner):
                raise RunLockedError(
                    f"{self.folder} is in use by another run (pid {owner.get('pid')} on "
                    f"{owner.get('host')}, since {owner.get('started')}): wait for it to finish or use "
                    f"another --out; if that process is not running, delete {self.path}")
            self._break(owner)
        raise RunLockedError(f"{self.folder}: could not take {self.path} (other runs keep taking it)")

    def release(self) -> None:
        """Give the lock back (the file is removed when the outermost holder releases it)."""
        key = self._key
        count = RunLock._held.get(key, 0)
        if count > 1:
            RunLock._held[key] = count - 1
            return
        RunLock._held.pop(key, None)
        owner = self._owner()
        mine = owner is not None and owner.get("pid") == os.getpid()
        if mine and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        if self._created:
            with contextlib.suppress(OSError):  # not empty: it holds the run's outputs
                self.folder.rmdir()

    def _create(self) -> bool:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:  # a read-only folder or file system, a full disk
            raise self._unwritable(err) from err
        with os.fdopen(fd, "w") as fh:
            fh.write(info)
        return True

    def _unwritable(self, err: OSError) -> RunFolderError:
        """Why the folder cannot hold a run, and what to do (raised before any work)."""
        path = (self.folder, *self.folder.parents)
        blocker = next((p for p in path if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            reason = f"{blocker} is a file, not a folder"
        else:
            reason = f"{err.strerror or type(err).__name__}: {err.filename or self.folder}"
        return RunFolderError(f"--out {self.folder}: the run folder cannot be created or written ({reason}); "
                              "pass an --out (run_dir) in a writable folder")

    def _owner(self, path: Path | None = None) -> dict[str, Any] | None:
        try:
            owner = json.loads((path or self.path).read_text())
            return owner if isinstance(owner, dict) else None
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner: dict[str, Any]) -> bool:
        if not owner:  # the file went away meanwhile
            return False
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname():
            return True  # another machine's process: it cannot be checked from here
        if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
            return False  # our own pid but not held by us: left behind (e.g. by a forked parent)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's live process
        return True

    def _break(self, stale: dict[str, Any]) -> None:
        """Remove a stale lock, unless another run replaced it meanwhile (then it is put back)."""
        if not stale:
            return
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self._owner(aside) == stale:
            aside.unlink(missing_ok=True)
            return
        try:  # we moved a fresh lock of another run: give it back
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)


# -- checks ------------------------------------------------------------------------------------------


def check_finite_weights(model: Any, where: str, step: int, lr: float, saved: str) -> None:
    """Raise :class:`DivergedError` before ``where`` is written when any weight is NaN or infinite.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 1)
        >>> check_finite_weights(layer, "best/", 3, 1e-3, "")
        >>> with torch.no_grad():
        ...     layer.bias.fill_(float("inf"))  # doctest: +ELLIPSIS
        Parameter...
        >>> check_finite_weights(layer, "best/", 3, 1e-3, "")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        agents.training.runs.DivergedError: training diverged at step 3: the weight tensor 'bias' ...
    """
    import torch

    from agents.parallel import distributed as dist
    from agents.parallel.distributed import is_dtensor

    bad, sharded = None, False
    for name, tensor in model.state_dict().items():
        if is_dtensor(tensor):  # FSDP: this rank checks its shard, the ranks agree below
            sharded, tensor = True, tensor.to_local()
        if bad is None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = name
    if sharded:
        bad = next((b for b in dist.all_gather_objects(bad) if b is not None), None)
    if bad is not None:
        raise DivergedError(f"weight tensor {bad!r} (not written to {where})", math.nan, step, lr, saved)


def check_finite(value: float, what: str, step: int, lr: float, saved: str) -> None:
    """Raise :class:`DivergedError` when ``value`` (a loss or gradient norm) is NaN or infinite.

    Example:
        >>> check_finite(0.5, "loss", 3, 1e-3, "")
        >>> check_finite(float("nan"), "loss", 4, 1e6, "No checkpoint was written.")
        Traceback (most recent call last):
        ...
        agents.training.runs.DivergedError: training diverged at step 4: the loss is nan (not \
finite). No checkpoint was written. Lower the learning rate (--lr, now 1e+06) and start over with \
--restart.
    """
    if not math.isfinite(value):
        raise DivergedError(what, value, step, lr, saved)


def saved_note(run: Path | None, saved_step: int | None) -> str:
    """Which checkpoint a diverged run keeps, for :class:`DivergedError`'s message.

    Example:
        >>> saved_note(Path("runs/x"), 40)
        'The last good checkpoint (step 40) is kept in runs/x/checkpoint.'
    """
    if run is None:
        return "Nothing was saved."
    if saved_step is None:
        return "No checkpoint was written."
    return f"The last good checkpoint (step {saved_step}) is kept in {run / 'checkpoint'}."


def check_policy_task(items: Any, task: Any, source: str = "the policy") -> None:
    """Refuse a policy (its :class:`~recgym.items.ItemTokenizer`) on a task over another catalogue.

    Both the policy's items and the task's items must describe the task's dataset catalogue with
    the same representation; identical objects pass without hashing.

    Example:
        >>> # check_policy_task(policy.items, task, source="--sft runs/x/best")
    """
    data = task.dataset.catalogue
    for have in (task.items, items):
        if have.catalogue is not data:
            mine = catalogue_fingerprint(have.catalogue, have.representation)
            theirs = catalogue_fingerprint(data, have.representation)
            if mine != theirs:
                raise CatalogueMismatchError(catalogue_message(source, mine, theirs))
    if items is not task.items and items.representation != task.items.representation:
        raise CatalogueMismatchError(f"{source} writes items as {items.representation!r}, the task as "
                                     f"{task.items.representation!r}: build the task with "
                                     "tokenizer=policy.items")


def catalogue_message(source: str, policy: Mapping[str, Any], env: Mapping[str, Any]) -> str:
    """Why a policy does not fit an env's catalogue, and what to do.

    Example:
        >>> print(catalogue_message("--sft x", {"items": 300, "representation": "sid", "sha256": "ab" * 32},
        ...                         {"items": 200, "representation": "sid", "sha256": "cd" * 32}))
        ... # doctest: +NORMALIZE_WHITESPACE
        --sft x was trained on another catalogue (300 items, sha256 abababababab...) than the env's (200
        items, sha256 cdcdcdcdcdcd...): its item ids and tokens would denote other items. Use a policy
        trained on this env's data (same --env, --dataset and --dataset-set), or train one (recgym sft).
    """
    return (f"{source} was trained on another catalogue ({policy['items']} items, sha256 "
            f"{policy['sha256'][:12]}...) than the env's ({env['items']} items, sha256 "
            f"{env['sha256'][:12]}...): "
            "its item ids and tokens would denote other items. Use a policy trained on this env's data (same "
            "--env, --dataset and --dataset-set), or train one (recgym sft).")


__all__ = [
    "CatalogueMismatchError", "CheckpointError", "DiskFullError", "DivergedError", "FINGERPRINT_FILE",
    "LOCK_FILE", "LearnerError", "RUN_OUTPUTS", "RunError", "RunFolderError", "RunLock", "RunLockedError",
    "RunMismatchError", "catalogue_fingerprint", "check_finite", "check_finite_weights",
    "check_policy_task", "check_run_folder", "clear_run", "config_fingerprint", "differences", "flatten",
    "items_fingerprint", "lock_on_main", "open_run", "open_run_on_main", "read_fingerprint",
    "run_fingerprint", "sampler_fingerprint", "saved_note", "task_fingerprint", "weights_fingerprint",
]
