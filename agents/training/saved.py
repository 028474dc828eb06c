"""The files of a saved policy folder, checked before anything is built from them.

:meth:`~agents.model.policy.LLMPolicy.save_pretrained` records a SHA-256 of each file it wrote (the
model's ``config.json``, the weights, the tokenizer, the item config and the catalogue) in
``recgym_policy.json``. Loading a folder (``LLMPolicy.from_pretrained``, a checkpoint's
``load_weights``) first checks every file it will read, before any model is built:

* it is there (a folder without ``config.json`` once built a default 7.7B-parameter model);
* it is whole: JSON parses, a safetensors file holds the bytes its header promises;
* it is the file that was saved (its SHA-256 is the recorded one; folders saved before the
  hashes were recorded skip this);
* the weights are those the config describes (names and shapes, against a model built on the
  ``meta`` device, which allocates nothing).

Each failure is a :class:`~agents.training.runs.CheckpointError` naming the file and the remedy.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agents.training.runs import CheckpointError

SAVE_AGAIN = "save the policy again (rerun the run that wrote it with --restart) or use another folder"
CONFIG = "config.json"
ITEM_FILES = ("recgym_items.json", "tokenizer.json", "tokenizer_config.json", "catalogue.npz")
# Config keys that fix the shapes of a model's weights (compared when weights are loaded into a model).
SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")


def weights_files(folder: str | os.PathLike[str]) -> list[str]:
    """The names of a ``save_pretrained`` folder's weights files (index and shards when sharded).

    Example:
        >>> import tempfile
        >>> weights_files(tempfile.mkdtemp())  # none yet: the file a save writes
        ['model.safetensors']
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shards = []  # check_files names the damaged index
        return [index.name, *shards]
    if (folder / "pytorch_model.bin").is_file():
        return ["pytorch_model.bin"]
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    return shards or ["model.safetensors"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB chunks.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x"
        >>> _ = path.write_bytes(b"")
        >>> sha256_file(path)[:12]
        'e3b0c44298fc'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def saved_hashes(folder: str | os.PathLike[str], extra: Iterable[str] = ()) -> dict[str, str]:
    """``{file name: SHA-256}`` of what a policy save wrote into ``folder`` (those present).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text("{}")
        >>> sorted(saved_hashes(folder))
        ['config.json']
    """
    folder = Path(folder)
    names = [CONFIG, *weights_files(folder), *extra, *ITEM_FILES]
    return {name: sha256_file(folder / name) for name in dict.fromkeys(names) if (folder / name).is_file()}


def check_files(
    folder: str | os.PathLike[str], names: Iterable[str], recorded: Mapping[str, str] | None,
    remedy: str = SAVE_AGAIN,
) -> None:
    """Each of ``names`` in ``folder`` is there, whole and, where ``recorded`` has its SHA-256, unchanged.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text('{"hidden_')
        >>> check_files(folder, ["config.json"], None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        agents.training.runs.CheckpointError: .../config.json is damaged (not valid JSON: ...); ...
    """
    folder = Path(folder)
    for name in dict.fromkeys(names):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the folder {folder} is incomplete; {remedy}")
        problem = _damage(path)
        if problem is not None:
            raise CheckpointError(f"{path} is damaged ({problem}); {remedy}")
        expected = (recorded or {}).get(name)
        if expected is not None and sha256_file(path) != expected:
            raise CheckpointError(
                f"{path} was changed after the policy was saved (its SHA-256 is not the one recorded in "
                f"{folder / 'recgym_policy.json'}): put the saved file back, or {remedy}")


def _damage(path: Path) -> str | None:
    """What is wrong with a file's form (None: nothing found), without reading tensors."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty"
        if path.suffix == ".json":
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                return f"not valid JSON: {err}"
            return None if isinstance(value, dict) else "not a JSON object"
        if path.suffix == ".safetensors":
            return _safetensors_damage(path, size)
        if path.suffix == ".npz" and not zipfile.is_zipfile(path):
            return "not a .npz archive"
    except OSError as err:
        return f"cannot be read: {err}"
    return None


def _safetensors_damage(path: Path, size: int) -> str | None:
    try:
        header = safetensors_header(path)
    except ValueError as err:
        return str(err)
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
    need = 8 + length + end
    return None if size >= need else f"truncated: {size} bytes, its header describes {need}"


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes and offsets); ValueError if
    the file does not start with one.

    Example:
        >>> # safetensors_header("runs/x/best/model.safetensors")["model.norm.weight"]["shape"]
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("truncated: no safetensors header")
        length = int.from_bytes(head, "little")
        if length > os.fstat(fh.fileno()).st_size - 8 or length > 1 << 30:
            raise ValueError("truncated or not a safetensors file: the header length is past the end")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a safetensors file: its header is not JSON ({err})") from err
    if not isinstance(header, dict) or not all(
            isinstance(v, dict) and "data_offsets" in v and "shape" in v for k, v in header.items()
            if k != "__metadata__"):
        raise ValueError("not a safetensors file: its header lists no tensors")
    return header


def check_weights_fit_config(folder: str | os.PathLike[str], remedy: str = SAVE_AGAIN) -> None:
    """The weights in ``folder`` are the ones its ``config.json`` describes: same names, same shapes.

    The model the config describes is built on the ``meta`` device (no memory) and compared with
    the safetensors headers, so a config changed after saving (another layer count, another
    width) is named before a model of that size is allocated.

    Example:
        >>> # check_weights_fit_config("runs/x/best")
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config_file = folder / CONFIG
    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # transformers' own validation: ValueError, OSError, KeyError, ...
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{config_file} is not a valid model config ({type(err).__name__}: "
                              f"{' '.join(line.strip() for line in first[:3])}); {remedy}") from err
    names = [n for n in weights_files(folder) if n.endswith(".safetensors")]
    if not names:
        return  # pytorch_model.bin: no header to compare with
    saved: dict[str, tuple[int, ...]] = {}
    for name in names:
        header = safetensors_header(folder / name)
        saved.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    problems = []
    for key, shape in expected.items():
        if key not in saved:
            if not (tied and output is not None and key.endswith("weight")
                    and model.get_submodule(key.rsplit(".", 1)[0]) is output):
                problems.append(f"{key} is not in the weights")
        elif saved[key] != shape:
            problems.append(f"{key} is {list(saved[key])} in the weights, {list(shape)} in the config")
    problems += [f"the weights hold {key}, which the config has not" for key in saved if key not in expected]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{config_file} does not describe the weights in {folder / names[0]} ({'; '.join(problems[:3])}"
            f"{more}): the config or the weights were changed after saving; {remedy}")


def check_config_fits_model(folder: str | os.PathLike[str], model: Any, remedy: str = SAVE_AGAIN) -> None:
    """``folder``'s ``config.json`` describes a model of ``model``'s shapes (before its weights are loaded
    into ``model``).

    Example:
        >>> # check_config_fits_model("runs/x/checkpoint", policy.model)
    """
    mine = getattr(model, "config", None)
    if mine is None or not hasattr(mine, "to_dict"):
        return
    mine = mine.to_dict()
    config_file = Path(folder) / CONFIG
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    diff = [f"{k}: {saved[k]} in the file, {mine[k]} in this model" for k in SHAPE_KEYS
            if k in saved and k in mine and saved[k] != mine[k]]
    if diff:
        raise CheckpointError(f"{config_file} describes another model ({'; '.join(diff)}); {remedy}")


def check_saved_folder(
    folder: str | os.PathLike[str], recorded: Mapping[str, Any] | None, *, items: bool,
    adapter: bool = False, remedy: str = SAVE_AGAIN,
) -> None:
    """All checks of a folder about to be loaded: the files read (``items``: the tokenizer, item
    config and catalogue too; ``adapter``: the adapter weights), then, for a folder saved by recgym
    (``recorded``: its ``recgym_policy.json``), weights against config.

    Example:
        >>> # folder = Path("runs/x/best")
        >>> # check_saved_folder(folder, LLMPolicy._read_policy_config(folder), items=True)
    """
    from agents.model.adapters import ADAPTER_FILE

    folder = Path(folder)
    names = [CONFIG, *weights_files(folder)]
    if adapter:
        names.append(ADAPTER_FILE)
    if items:
        names += list(ITEM_FILES)
    check_files(folder, names, (recorded or {}).get("sha256"), remedy)
    if recorded is not None:
        check_weights_fit_config(folder, remedy)


__all__ = ["SAVE_AGAIN", "check_config_fits_model", "check_files", "check_saved_folder",
           "check_weights_fit_config", "safetensors_header", "saved_hashes", "sha256_file", "weights_files"]
