"""What a RecGen environment is about: requests, items as tokens, the prefix tree and the reward.

A :class:`RecGenTask` is built once and shared: the single env, the batched vector env, the
PettingZoo env and any number of copies use the same tree and prompt cache.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from recgym._checks import check_choice, check_int, check_options, check_real, int_array
from recgym.data.dataset import SPLITS, Dataset, Examples
from recgym.rewards import check_reward, item_rewards

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from recgym.items import ItemTokenizer
    from recgym.prompts import PromptTemplate
    from recgym.tree import PrefixTree

RewardFn = Callable[[np.ndarray, int, dict[str, Any]], float]
"""``reward_fn(generated_item_ids, target_item, request) -> float``; ``request`` holds the history."""

RESET_OPTIONS = ("row", "history", "target")
"""The keys a single-request env's ``reset(options=...)`` understands (see
:meth:`RecGenTask.request_from_options`)."""


@dataclass(frozen=True)
class Request:
    """One recommendation request: a history (item ids, oldest first) and the true next item."""

    history: tuple[int, ...]
    target: int
    row: int = -1  # row in the split, -1 for a request given through reset options


class RecGenTask:
    """Requests of one split, their prompts as token ids, the items' prefix tree, and the reward.

    Args:
        dataset: a :class:`~recgym.data.Dataset`, or a name / folder for :func:`recgym.data.load`.
        split: which split's requests episodes draw from.
        representation: ``"title"`` or ``"sid"``; default: titles when the catalogue has them (with
            an :class:`~recgym.items.ItemTokenizer`: its representation, which a given one must match).
        tokenizer: an :class:`~recgym.items.ItemTokenizer`, a Hugging Face tokenizer, a local path
            or hub name for ``AutoTokenizer``, or None for the offline default (trained on the
            dataset once and cached under ``recgym.data.data_dir()/tokenizers``).
        template: prompt template override: a :class:`~recgym.prompts.PromptTemplate`, or the name of a
            built-in one, ``"instruction"`` (the default) or ``"compact"`` (items back to back, no
            text: for models trained from scratch); with an ``ItemTokenizer`` it must be its template.
        max_history: history window when ``dataset`` is loaded by name (default 10); with a
            :class:`~recgym.data.Dataset` it must be the dataset's own window, if given.
        max_prompt_len: pad length of prompt observations; default: a bound computed from the
            longest item text (prompts longer than it raise a ValueError naming the request).
        hit_reward, miss_reward: reward of a generated item that is / is not the target (finite).
        reward_fn: optional ``(generated_item_ids, target, request) -> float`` replacing the
            hit / miss reward; a non-finite value it returns is a ValueError.
        reward: what an item earns given its rank in the agent's list (:mod:`recgym.rewards`):
            ``"hit"`` (the default), ``"ranking"`` (ReRe's ranking-aware reward) or
            ``"rank_discounted"``; ranks are the slots of a vector env's group. Not with ``reward_fn``.
        vocab_size: vocabulary size of the offline default tokenizer (>= 257: the byte alphabet of
            byte-level BPE plus the end token); ignored when ``tokenizer`` is given.
        dataset_kwargs: passed to :func:`recgym.data.load` (only when ``dataset`` is a name or folder).
        sid_index: an LC-Rec-style ``index.json`` (e.g. from ``recgym data sids``) whose semantic IDs
            replace the catalogue's: a dataset with only titles becomes a SID env; ``"atomic"``: one
            token per item (``<a_i>``), no shared codes.

    Every setting is checked before the dataset is loaded or a tokenizer trained: a float where an
    int belongs, a NaN reward or a setting that would be ignored is an error naming it.

    Example:
        >>> task = RecGenTask("synthetic", representation="sid",
        ...                   dataset_kwargs={"num_items": 300, "num_users": 100})
        >>> ids, lens = task.prompt_tokens(np.array([0, 1]))
        >>> ids.shape[0], bool((lens > 0).all())
        (2, True)
    """

    def __init__(
        self,
        dataset: Dataset | str | os.PathLike[str] = "synthetic",
        *,
        split: str = "train",
        representation: str | None = None,
        tokenizer: ItemTokenizer | PreTrainedTokenizerBase | str | None = None,
        template: PromptTemplate | str | None = None,
        max_history: int | None = None,
        max_prompt_len: int | None = None,
        hit_reward: float = 1.0,
        miss_reward: float = 0.0,
        reward_fn: RewardFn | None = None,
        reward: str = "hit",
        vocab_size: int = 4096,
        dataset_kwargs: dict[str, Any] | None = None,
        sid_index: str | os.PathLike[str] | None = None,
    ) -> None:
        from recgym.items import ItemTokenizer, check_vocab_size

        # Every setting first: nothing is loaded or trained for a task that cannot be built.
        check_choice(split, "split", SPLITS)
        if not isinstance(dataset, (Dataset, str, os.PathLike)):
            raise TypeError(f"dataset must be a Dataset, a name or a folder, got {type(dataset).__name__}")
        _check_item_settings(tokenizer, representation, template)
        if max_history is not None:
            max_history = check_int(max_history, "max_history", minimum=1)
        if max_prompt_len is not None:
            max_prompt_len = check_int(max_prompt_len, "max_prompt_len", minimum=1)
        hit_reward = check_real(hit_reward, "hit_reward")
        miss_reward = check_real(miss_reward, "miss_reward")
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable or None, got {type(reward_fn).__name__}")
        _check_reward_choice(reward, reward_fn)
        if tokenizer is None:
            vocab_size = check_vocab_size(vocab_size)
        else:  # unused, but never a nonsense value
            vocab_size = check_int(vocab_size, "vocab_size", minimum=1)
        if dataset_kwargs is not None and not isinstance(dataset_kwargs, Mapping):
            raise TypeError(f"dataset_kwargs must be a dict or None, got {type(dataset_kwargs).__name__}")
        if isinstance(dataset, Dataset):
            if dataset_kwargs:
                raise ValueError(f"dataset_kwargs only apply when dataset is a name or folder, not a "
                                 f"loaded Dataset: got {sorted(dataset_kwargs)}")
            if max_history is not None and max_history != dataset.max_history:
                raise ValueError(f"max_history={max_history} but the dataset's window is "
                                 f"{dataset.max_history}: load it with max_history={max_history}, or "
                                 "leave max_history out")
        else:
            dataset = _load_dataset(dataset, max_history or 10, dict(dataset_kwargs or {}))
        if sid_index is not None:
            from recgym.sids import with_sid_index

            dataset = with_sid_index(dataset, sid_index)
        self.dataset = dataset
        self.split = split
        self.examples: Examples = dataset.split(split)
        if representation is None:
            representation = "title" if dataset.catalogue.titles is not None else "sid"
        if isinstance(template, str):
            from recgym.prompts import template_named

            template = template_named(template, representation)
        if isinstance(tokenizer, ItemTokenizer):
            _check_same_catalogue(tokenizer.catalogue, dataset.catalogue)
            self.items = tokenizer
        elif tokenizer is None:
            self.items = _default_item_tokenizer(dataset, representation, template, vocab_size)
        else:
            if isinstance(tokenizer, (str, os.PathLike)):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            self.items = ItemTokenizer(tokenizer, dataset.catalogue, representation, template)
        self.representation = self.items.representation
        self.tree: PrefixTree = self.items.build_tree()
        self.vocab_size = self.items.vocab_size
        self.eos_token_id = self.items.eos_token_id
        self.pad_token_id = self.items.pad_token_id
        self.hit_reward = hit_reward
        self.miss_reward = miss_reward
        self.reward_fn = reward_fn
        self.reward = reward
        self.max_prompt_len = max_prompt_len or self._prompt_len_bound()
        self._prompt_cache: dict[int, np.ndarray] = {}

    @property
    def num_requests(self) -> int:
        return len(self.examples)

    @property
    def max_history(self) -> int:
        return self.examples.max_history

    @property
    def max_response_len(self) -> int:
        """The longest item token sequence (generation never takes more steps)."""
        return int(self.tree.max_depth)

    def request(self, row: int) -> Request:
        """The request at ``row`` of the split."""
        ex = self.examples
        return Request(tuple(ex.history[row, : ex.history_len[row]].tolist()), int(ex.target[row]), row)

    def _prompt_len_bound(self) -> int:
        # Longest item text written in a history, times the window, plus the template itself.
        n = self.dataset.catalogue.num_items
        longest = max(range(n), key=lambda i: len(self.items.item_text(i).encode()))
        empty = len(self.items.encode_prompts([[]])[0])
        one = len(self.items.encode_prompts([[longest]])[0])
        return empty + self.max_history * (one - empty + 2)

    def prompt_tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Padded prompt token ids (B, max_prompt_len) and lengths (B,) for rows of the split.

        Prompts are tokenized on first use in one batched call and cached per row.
        """
        rows = np.asarray(rows, dtype=np.int64)
        missing = sorted({int(r) for r in rows.tolist()} - self._prompt_cache.keys())
        if missing:
            ex = self.examples
            encoded = self.items.encode_prompts(
                [ex.history[r, : ex.history_len[r]].tolist() for r in missing]
            )
            for r, ids in zip(missing, encoded):
                self._prompt_cache[r] = self._checked(ids, f"{self.split} row {r}")
        return self._pad([self._prompt_cache[int(r)] for r in rows.tolist()])

    def custom_prompt_tokens(self, histories: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`prompt_tokens` for histories given directly (not cached)."""
        encoded = self.items.encode_prompts([list(h) for h in histories])
        return self._pad([self._checked(ids, "a request given in options") for ids in encoded])

    def _checked(self, ids: list[int], where: str) -> np.ndarray:
        if len(ids) > self.max_prompt_len:
            raise ValueError(f"the prompt of {where} has {len(ids)} tokens, more than max_prompt_len="
                             f"{self.max_prompt_len}; pass a larger max_prompt_len")
        return np.asarray(ids, dtype=np.int64)

    def _pad(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lens = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
        out = np.full((len(seqs), self.max_prompt_len), self.pad_token_id, dtype=np.int64)
        if seqs:
            out[np.arange(self.max_prompt_len) < lens[:, None]] = np.concatenate(seqs)
        return out, lens

    def request_from_options(
        self, options: Mapping[str, Any] | None, np_random: np.random.Generator, where: str = "this env",
        *, unknown: str = "error",
    ) -> tuple[Request, np.ndarray, int]:
        """The request a single-request env's ``reset(options=...)`` asks for, with its prompt ids.

        ``{"history": [...], "target": t}`` is a request of the caller's own; ``{"row": i}`` is row
        i of the split; otherwise (or with ``row=None``) a row is drawn uniformly with
        ``np_random``. Keys outside :data:`RESET_OPTIONS`, values that are not ints (floats, bools,
        strings) and ``row`` together with a custom request are errors naming the option; ``where``
        (the env's name) goes into the unknown-key message, and ``unknown="warn"`` makes unknown
        keys a warning instead (see :func:`recgym._checks.check_options`).

        Example:
            >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
            ...                   dataset_kwargs={"num_items": 300, "num_users": 100})
            >>> request, ids, length = task.request_from_options({"row": 2}, np.random.default_rng(0))
            >>> request.row, request.target == task.request(2).target
            (2, True)
            >>> task.request_from_options({"row": 2.0}, np.random.default_rng(0))
            Traceback (most recent call last):
            ...
            TypeError: options['row'] must be an int, got 2.0 (float)
        """
        options = check_options(options, RESET_OPTIONS, where, unknown=unknown)
        if "history" in options or "target" in options:
            if "history" not in options or "target" not in options:
                raise ValueError("options need both 'history' and 'target' for a custom request")
            if "row" in options:
                raise ValueError("options: give 'row' or 'history' and 'target', not both")
            request = self.validate_request(options["history"], options["target"])
            ids, lens = self.custom_prompt_tokens([request.history])
            return request, ids[0], int(lens[0])
        if self.num_requests == 0:
            raise ValueError(f"the {self.split!r} split of {self.dataset.name!r} has no requests")
        row = options.get("row")
        if row is None:
            row = int(np_random.integers(self.num_requests))
        else:
            row = check_int(row, "options['row']", minimum=0, maximum=self.num_requests - 1)
        ids, lens = self.prompt_tokens(np.array([row]))
        return self.request(row), ids[0], int(lens[0])

    def validate_request(
        self, history: Sequence[int], target: int,
        names: tuple[str, str] = ("options['history']", "options['target']"),
    ) -> Request:
        """Check a request given through reset options; ids must be catalogue items (ints).

        A history longer than :attr:`max_history` keeps its newest items, like the dataset's own
        windows. ``names`` are what the errors call the history and the target.

        Example:
            >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
            ...                   dataset_kwargs={"num_items": 300, "num_users": 100})
            >>> task.validate_request(np.arange(12), 5).history[:2]
            (2, 3)
            >>> task.validate_request("123", 5)
            Traceback (most recent call last):
            ...
            TypeError: options['history'] must be a sequence of ints, got the string '123'
        """
        n = self.dataset.catalogue.num_items
        hist = int_array(history, names[0], minimum=0, maximum=n - 1)
        target = check_int(target, names[1], minimum=0, maximum=n - 1)
        return Request(tuple(hist[-self.max_history:].tolist()), target)

    def with_reward(self, reward: str) -> RecGenTask:
        """This task (sharing its data, tokenizer and tree) paying ``reward`` instead.

        Example:
            >>> task = RecGenTask("synthetic", representation="sid",
            ...                   dataset_kwargs={"num_items": 300, "num_users": 100})
            >>> task.with_reward("ranking").reward, task.reward
            ('ranking', 'hit')
        """
        _check_reward_choice(reward, self.reward_fn)
        if reward == self.reward:
            return self
        other = copy.copy(self)
        other.reward = reward
        return other

    def rewards(
        self, states: np.ndarray, targets: np.ndarray, requests: Sequence[Request] | None = None,
        ranks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rewards and hits for complete states (vectorized unless a ``reward_fn`` is set).

        ``ranks`` (0-based, default 0) are the items' places in their lists; the reward is what each
        item earns on its own (:func:`recgym.rewards.item_rewards`; ``ranking``'s list part is
        :func:`recgym.rewards.list_bonus`, which the vector env adds when a whole list has ended).
        """
        offsets, values = self.tree.items_batch(states)
        counts = np.diff(offsets)
        match = values == np.repeat(np.asarray(targets), counts)
        hits = np.add.reduceat(match, offsets[:-1]) > 0 if len(values) else np.zeros(len(states), bool)
        hits &= counts > 0
        if self.reward_fn is None:
            ranks = np.zeros(len(states), np.int64) if ranks is None else ranks
            return item_rewards(hits, ranks, self.reward, self.hit_reward, self.miss_reward), hits
        assert requests is not None, "reward_fn needs the requests"
        rewards = np.array([
            self._user_reward(values[offsets[i]:offsets[i + 1]], int(targets[i]), requests[i])
            for i in range(len(states))
        ])
        return rewards, hits

    def _user_reward(self, items: np.ndarray, target: int, request: Request) -> float:
        value = self.reward_fn(items, target, {"history": list(request.history), "row": request.row})
        # A NaN reward would silently poison every advantage it is averaged into. Any real scalar
        # (a numpy or torch 0-d value too) is fine; a string or a bool is a mistake, not a number.
        try:
            number = math.nan if isinstance(value, (str, bytes, bool, np.bool_)) else float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"reward_fn returned {value!r} for target {target} (request row {request.row}); "
                             "it must return a finite number")
        return number


def resolve_task(task: RecGenTask | None, task_kwargs: dict[str, Any]) -> RecGenTask:
    """The task an env was given, or one built from its task keywords (never both).

    Example:
        >>> resolve_task(None, {"representation": "sid", "vocab_size": 500,
        ...                     "dataset_kwargs": {"num_items": 200, "num_users": 50}}).representation
        'sid'
    """
    if task is not None and not isinstance(task, RecGenTask):
        raise TypeError(f"task must be a RecGenTask or None, got {type(task).__name__} "
                        "(pass a dataset as dataset=..., or build RecGenTask(dataset, ...) first)")
    if task is not None and task_kwargs:
        raise ValueError(f"pass either task or task keywords, not both: {sorted(task_kwargs)}")
    return task if task is not None else RecGenTask(**task_kwargs)


def _check_reward_choice(reward: Any, reward_fn: RewardFn | None) -> None:
    check_reward(reward)
    if reward_fn is not None and reward != "hit":
        raise ValueError(f"reward={reward!r} and reward_fn: a reward_fn replaces the hit / miss reward, "
                         "so leave reward='hit' with it")


def _check_item_settings(tokenizer: Any, representation: str | None, template: Any) -> None:
    """How items become tokens: known kinds, and nothing an ItemTokenizer would silently override."""
    from recgym.items import REPRESENTATIONS, ItemTokenizer
    from recgym.prompts import LAYOUTS, PromptTemplate, template_named

    if representation is not None:
        check_choice(representation, "representation", REPRESENTATIONS)
    if not (tokenizer is None or isinstance(tokenizer, (ItemTokenizer, str, os.PathLike))
            or (callable(tokenizer) and hasattr(tokenizer, "get_vocab"))):
        raise TypeError("tokenizer must be an ItemTokenizer, a Hugging Face tokenizer, a local path or "
                        f"hub name, or None for the offline default; got {type(tokenizer).__name__}")
    if isinstance(template, str):
        check_choice(template, "template", LAYOUTS)
    elif template is not None and not isinstance(template, PromptTemplate):
        raise TypeError(f"template must be a PromptTemplate, {' or '.join(map(repr, LAYOUTS))}, or None, "
                        f"got {type(template).__name__}")
    if isinstance(tokenizer, ItemTokenizer):
        if representation is not None and representation != tokenizer.representation:
            raise ValueError(f"representation={representation!r} but the tokenizer writes items as "
                             f"{tokenizer.representation!r}: leave representation out or pass a matching one")
        if isinstance(template, str):
            template = template_named(template, tokenizer.representation)
        if template is not None and template != tokenizer.template:
            raise ValueError("template differs from the tokenizer's: an ItemTokenizer's items are "
                             "tokenized after its own template's header; leave template out")


def _load_dataset(name: str | os.PathLike[str], max_history: int, kwargs: dict[str, Any]) -> Dataset:
    from recgym.data import load
    from recgym.data.registry import PREPARED_FOLDERS, RAW_PIPELINES

    try:
        return load(name, max_history=max_history, **kwargs)
    except FileNotFoundError as err:
        key = os.fspath(name)
        if key in PREPARED_FOLDERS and "recgym data download" in str(err):
            raise
        hint = (f"get it with `recgym data download {key}` (or load(..., download=True))"
                if key in RAW_PIPELINES or key in PREPARED_FOLDERS
                else "pass dataset='path/to/folder' for a local folder in D3, LC-Rec or SPRec format")
        raise FileNotFoundError(f"{err}. {hint}") from err


def _check_same_catalogue(tokenized: Any, catalogue: Any) -> None:
    """An ItemTokenizer built for another catalogue would score wrong item ids: refuse it.

    Example:
        >>> from recgym.data import Catalogue
        >>> _check_same_catalogue(Catalogue(2, titles=["a", "b"]), Catalogue(3, titles=["a", "b", "c"]))
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the tokenizer's catalogue has 2 items, the dataset's 3: ...
    """
    if tokenized is catalogue:
        return
    problem = None
    if tokenized.num_items != catalogue.num_items:
        problem = f"has {tokenized.num_items} items, the dataset's {catalogue.num_items}"
    elif tokenized.titles != catalogue.titles:
        problem = "has other titles than the dataset's"
    elif (tokenized.sids is None) != (catalogue.sids is None) or (
            tokenized.sids is not None and not np.array_equal(tokenized.sids, catalogue.sids)):
        problem = "has other semantic IDs than the dataset's"
    if problem:
        raise ValueError(f"the tokenizer's catalogue {problem}: the policy or tokenizer was built for "
                         "another catalogue")


def _default_item_tokenizer(
    dataset: Dataset, representation: str, template: PromptTemplate | None, vocab_size: int
) -> ItemTokenizer:
    """Train the offline tokenizer once per catalogue and cache it (synthetic data: in memory only);
    a damaged cache is trained again, with a :class:`~recgym.data.DataWarning` naming the file."""
    from recgym.data import DataFormatError, DataWarning, data_dir
    from recgym.items import ItemTokenizer

    cat = dataset.catalogue
    texts = cat.titles if representation == "title" else [cat.sid_string(i) for i in range(cat.num_items)]
    if texts is None:
        return ItemTokenizer.train(dataset, representation, template=template, vocab_size=vocab_size)
    digest = hashlib.sha256("\n".join(texts).encode() + repr(template).encode()).hexdigest()[:12]
    folder = data_dir() / "tokenizers" / f"{dataset.name}-{representation}-{vocab_size}-{digest}"
    if (folder / "recgym_items.json").exists():  # written last: the cache is complete
        try:
            return ItemTokenizer.load(folder, cat)
        except DataFormatError as err:  # a damaged cache is rebuilt (the same training, the same tokenizer)
            warnings.warn(f"rebuilding a damaged tokenizer cache: {err}", DataWarning, stacklevel=3)
            shutil.rmtree(folder, ignore_errors=True)
    items = ItemTokenizer.train(dataset, representation, template=template, vocab_size=vocab_size)
    # Written whole under this process's own name, then renamed into place: processes that build the
    # same cache at once (torchrun ranks) never write into one folder; the first rename wins.
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    items.save(tmp)
    if folder.exists() and not (folder / "recgym_items.json").exists():
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete cache from an interrupted writer
    try:
        os.rename(tmp, folder)
    except OSError:  # another process put a complete cache there first: the same training, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return items
