"""Building what commands run on: tasks from env ids, policies, selections (used by the CLI and bench).

The library side of the command line: :mod:`agents.cli` parses arguments and calls these;
:mod:`agents.bench.runner` calls them too. Nothing here imports the CLI.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from agents.configs import AdapterConfig
from agents.training.runs import CatalogueMismatchError, catalogue_fingerprint, catalogue_message
from recgym.data import Dataset


def make_task(
    env_id: str, split: str, overrides: dict[str, Any], tokenizer: Any = None, source: str = "the policy",
) -> Any:
    """The :class:`~recgym.envs.task.RecGenTask` behind a registered env id (its kwargs, then ``overrides``).

    With an :class:`~recgym.items.ItemTokenizer` (a saved policy's ``items``), the env's dataset is
    loaded first and its catalogue compared with the policy's: another catalogue (item ids would
    mean other items) or another ``representation`` is a
    :class:`~agents.training.runs.CatalogueMismatchError` naming ``source`` (e.g. ``"--sft runs/x/best"``).
    Unknown or ill-typed task options (``--set``) and a missing dataset are ValueErrors /
    FileNotFoundErrors that speak the command line.

    Example:
        >>> task = make_task("RecGen-Synthetic-v0", "valid", {"representation": "sid", "vocab_size": 400,
        ...                  "dataset_kwargs": {"num_items": 300, "num_users": 100}})
        >>> task.split, task.representation
        ('valid', 'sid')
        >>> make_task("RecGen-Synthetic-v0", "valid", {"vocab": 400})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --set: unknown task option(s) ['vocab']; known: dataset, dataset_kwargs, ...
    """
    import gymnasium as gym

    import recgym  # noqa: F401  (registers the ids)
    from recgym.envs.task import RecGenTask
    from recgym.items import ItemTokenizer

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise ValueError(f"--env: {err}") from err
    known = set(inspect.signature(RecGenTask).parameters) - {"split"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"--set: unknown task option(s) {unknown}; known: {', '.join(sorted(known))}")
    kwargs = {**spec.kwargs, **overrides, "split": split}
    if isinstance(tokenizer, ItemTokenizer):
        wanted = kwargs.pop("representation", None)
        if wanted is not None and wanted != tokenizer.representation:
            raise CatalogueMismatchError(
                f"--representation {wanted}: {source} writes items as {tokenizer.representation!r}; leave "
                f"--representation out (a saved policy brings its own) or use a policy trained on {wanted!r}")
        name = kwargs.get("dataset", "synthetic")
        if not isinstance(name, Dataset):
            kwargs["dataset"] = _load(name, kwargs.pop("max_history", None) or 10,
                                      kwargs.pop("dataset_kwargs", None) or {})
        if kwargs.get("sid_index") is not None:  # the SIDs the task would attach, before comparing
            from recgym.sids import with_sid_index

            kwargs["dataset"] = with_sid_index(kwargs["dataset"], kwargs.pop("sid_index"))
        theirs = catalogue_fingerprint(kwargs["dataset"].catalogue, tokenizer.representation)
        mine = catalogue_fingerprint(tokenizer.catalogue, tokenizer.representation)
        if mine != theirs:
            raise CatalogueMismatchError(catalogue_message(source, mine, theirs))
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):  # a named offline model -> its converted folder
            from agents.model.pretrained import resolve_model

            tokenizer = resolve_model(os.fspath(tokenizer))
        kwargs["tokenizer"] = tokenizer
    try:
        return RecGenTask(**kwargs)
    except TypeError as err:  # an ill-typed option value (the message names it)
        raise ValueError(f"task option: {err} (check --set / --dataset-set)") from err
    except FileNotFoundError as err:
        raise dataset_not_found(kwargs.get("dataset", "synthetic"), err) from err


def _load(name: Any, max_history: int, dataset_kwargs: dict[str, Any]) -> Dataset:
    from recgym.data import load

    try:
        return load(name, max_history=max_history, **dataset_kwargs)
    except FileNotFoundError as err:
        raise dataset_not_found(name, err) from err


def dataset_not_found(name: Any, err: FileNotFoundError, flag: str = "--dataset") -> FileNotFoundError:
    """A missing dataset, said for the command line: what to run or where to put it (``flag``: the
    option that named it; empty for a positional name, as in ``recgym data download NAME``).

    Example:
        >>> print(dataset_not_found("games", FileNotFoundError("/c/x.gz does not exist; pass ...")))
        /c/x.gz does not exist: dataset 'games' is not downloaded yet; run `recgym data download games`
    """
    from recgym.data.registry import PREPARED_FOLDERS, RAW_PIPELINES, available, search_path

    cause = err.__cause__ if isinstance(err.__cause__, FileNotFoundError) else err
    first = str(cause).split(";")[0].split(". Get it with")[0]
    key = os.fspath(name)
    if key in RAW_PIPELINES:
        return FileNotFoundError(f"{first}: dataset {key!r} is not downloaded yet; run `recgym data download "
                                 f"{key}`")
    if key in PREPARED_FOLDERS:
        roots = ", ".join(str(p) for p in search_path())
        give = f"{flag} " if flag else "its path, "
        folder = PREPARED_FOLDERS[key][0]
        return FileNotFoundError(f"dataset {key!r} not found: run `recgym data download {key}`, put the "
                                 f"folder {folder!r} in one of [{roots}] (RECGYM_DATA_DIR, or set "
                                 f"RECGYM_DATA_PATH to the folder that holds it), or pass {give}"
                                 f"path/to/{folder}")
    said = f"{flag} {key}" if flag else f"dataset {key!r}"
    if not Path(key).exists():
        return FileNotFoundError(f"{said}: no such folder, and not a dataset name (one of "
                                 f"{', '.join(available())}; `recgym data list` describes them)")
    return FileNotFoundError(f"{said}: {first}")


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
    adapters: AdapterConfig | None = None,
) -> Any:
    """An :class:`~agents.model.policy.LLMPolicy`: a pretrained causal LM (``model``) or a fresh preset.

    ``adapters`` (LoRA, a frozen trunk) are applied with :func:`agents.model.adapters.apply_adapters`.

    Example:
        >>> # policy = build_policy(task.items, model="smollm2-135m", adapters=AdapterConfig(lora_r=8))
    """
    from agents.model.policy import LLMPolicy

    if model:
        policy = LLMPolicy.from_pretrained(model, items=items, device=device)
    else:
        policy = LLMPolicy.from_config(preset, items, seed=seed, device=device)
    if adapters is not None and adapters.enabled:
        from agents.model.adapters import apply_adapters

        apply_adapters(policy, adapters)
    return policy


def adapter_record(adapters: AdapterConfig | None) -> dict[str, Any] | None:
    """The adapter settings a run records (and its fingerprint compares); None when nothing is adapted.

    Example:
        >>> adapter_record(AdapterConfig(lora_r=4))["lora_r"], adapter_record(AdapterConfig())
        (4, None)
    """
    if adapters is None or not adapters.enabled:
        return None
    return dataclasses.asdict(adapters)


def load_subset(path: str, num_requests: int, *, task: Any = None) -> tuple[np.ndarray, bool]:
    """``(rows in training order, curriculum?)`` from a ``recgym select`` file, checked against the split.

    With ``task`` (the training task), a file selected on another catalogue (``recgym select``
    records its dataset and :func:`~agents.training.runs.catalogue_fingerprint`) is a ValueError naming
    ``--subset``: its rows would be other requests. A file without that record (an older
    ``recgym select``) loads with a warning.

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
    if task is not None:
        _check_subset_catalogue(path, selection, task)
    if len(order) == 0 or order.min() < 0 or order.max() >= num_requests:
        raise ValueError(f"--subset {path}: rows must be in 0..{num_requests - 1} of the training split")
    return order, bool(selection.get("curriculum", False))


def _check_subset_catalogue(path: str, selection: dict[str, Any], task: Any) -> None:
    """A selection's recorded catalogue against the training task's (see :func:`load_subset`)."""
    recorded = selection.get("catalogue")
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        warnings.warn(f"--subset {path} does not record the catalogue it was selected on (an older "
                      "`recgym select`), so its rows cannot be checked against this dataset: run `recgym "
                      "select` again to have them checked", stacklevel=3)
        return
    mine = catalogue_fingerprint(task.dataset.catalogue, task.representation)
    if (recorded.get("items"), recorded["sha256"]) != (mine["items"], mine["sha256"]):
        raise ValueError(
            f"--subset {path} was selected on another catalogue (dataset {selection.get('dataset', '?')}, "
            f"{recorded.get('items')} items, sha256 {str(recorded['sha256'])[:12]}...) than the one trained "
            f"on (dataset {task.dataset.name}, {mine['items']} items, sha256 {mine['sha256'][:12]}...): its "
            "rows would be other requests. Run `recgym select` on this dataset (the same --env, --dataset "
            "and --dataset-set) and pass its --out")


def subset_sampler(
    path: str, num_requests: int, requests_per_step: int, seed: int, *, task: Any = None
) -> tuple[Any, dict[str, Any]]:
    """The RL request sampler over a ``recgym select`` file's rows, and what to record about it.

    A curriculum selection (MiniRec's easy-to-hard order) is followed in order
    (:class:`~agents.minirec.CurriculumSampler`); any other is shuffled per epoch
    (:class:`~agents.training.rl.EpochSampler`). ``task``: the training task, whose catalogue the file's
    must be (:func:`load_subset`).

    Example:
        >>> # sampler, info = subset_sampler("runs/minirec.json", train.num_requests, 16, seed=0, task=train)
    """
    from agents.minirec import CurriculumSampler
    from agents.training.rl import EpochSampler

    order, ordered = load_subset(path, num_requests, task=task)
    sampler = (CurriculumSampler(order, requests_per_step) if ordered
               else EpochSampler(order, requests_per_step, seed=seed))
    return sampler, {"file": str(path), "requests": len(order), "curriculum": ordered}


def json_text(results: dict[str, Any]) -> str:
    """Indented JSON with every list of integers on one line (per-request ranks stay one line each).

    Example:
        >>> print(json_text({"ranks": [3, -1, 0]}))
        {
          "ranks": [3, -1, 0]
        }
    """
    text = json.dumps(results, indent=2)
    # indent puts each item on its own line; strings never hold a newline, so they are left alone
    return re.sub(r"\[\n\s*-?\d+(?:,\n\s*-?\d+)*\n\s*\]",
                  lambda m: "[" + ", ".join(re.findall(r"-?\d+", m.group(0))) + "]", text)


def write_json(path: str | Path | None, results: dict[str, Any]) -> Path | None:
    """Write ``results`` as indented JSON atomically and say where (nothing when ``path`` is None).

    Example:
        >>> write_json(None, {"a": 1}) is None
        True
    """
    if not path:
        return None
    from agents.training.tracking import write_atomically

    written = write_atomically(Path(path), json_text(results))
    print(f"wrote {written}")
    return written


__all__ = ["build_policy", "dataset_name", "dataset_not_found", "load_subset", "make_task", "write_json"]
