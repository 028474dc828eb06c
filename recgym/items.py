"""Items as token sequences: titles tokenized in context, or semantic-ID codes as added tokens.

An :class:`ItemTokenizer` binds a Hugging Face tokenizer, a catalogue, a representation
(``"title"`` or ``"sid"``) and a :class:`~recgym.prompts.PromptTemplate`. It gives every item the
exact token sequence a model writes after the prompt's response header, ending with the
end-of-sequence token, and renders / encodes prompts for requests.

Why *in context*: byte-level BPE tokenizers such as Qwen2's merge the opening quote with the first
word (``'"Epic'`` is one pre-token), so tokenizing a bare title gives ids the model never writes.
Titles are therefore tokenized as ``header + response`` and the header's tokens are cut off; a
check makes sure the header tokenizes the same alone and in context.

The offline default tokenizer (:func:`train_tokenizer`) is a byte-level BPE trained with
``tokenizers`` using Qwen2's pre-tokenization pattern, so it shows the same quote merging.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recgym._checks import check_choice, check_int
from recgym.data.dataset import Catalogue, Dataset, format_sid
from recgym.prompts import SID_TEMPLATE, TITLE_TEMPLATE, PromptTemplate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from recgym.tree import PrefixTree

EOS_TOKEN = "<|endoftext|>"
REPRESENTATIONS = ("title", "sid")
MIN_VOCAB_SIZE = 257
"""The smallest vocabulary the offline tokenizer can have: byte-level BPE's 256-byte alphabet plus
the end token. A smaller ``vocab_size`` would silently give a larger vocabulary than asked."""
# Qwen2's pre-tokenizer split pattern: a non-letter may join the following letters.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def sid_vocabulary(sids: np.ndarray) -> list[str]:
    """All SID tokens a catalogue needs, level by level: ``<a_0> .. <a_{n_a-1}>, <b_0> ..``.

    Example:
        >>> sid_vocabulary(np.array([[0, 1], [2, 0]]))
        ['<a_0>', '<a_1>', '<a_2>', '<b_0>', '<b_1>']
    """
    sizes = np.asarray(sids).max(axis=0) + 1
    return [f"<{chr(ord('a') + lvl)}_{c}>" for lvl, size in enumerate(sizes.tolist()) for c in range(size)]


def check_vocab_size(vocab_size: Any) -> int:
    """``vocab_size`` of a tokenizer to train, as an int >= :data:`MIN_VOCAB_SIZE`, or an error naming it.

    Example:
        >>> check_vocab_size(4096)
        4096
        >>> check_vocab_size(-1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: vocab_size must be >= 257 (the 256-byte alphabet of byte-level BPE plus ...), got -1
    """
    vocab_size = check_int(vocab_size, "vocab_size")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (the 256-byte alphabet of byte-level BPE "
                         f"plus the end token; SID tokens come on top), got {vocab_size}")
    return vocab_size


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 4096, added_tokens: Sequence[str] = ()
) -> PreTrainedTokenizerBase:
    """Train the offline default tokenizer: byte-level BPE with Qwen2's pre-tokenization.

    ``added_tokens`` (e.g. SID tokens) are never split and come on top of ``vocab_size`` (an upper
    bound: a small corpus may support fewer merges). The end-of-sequence token ``<|endoftext|>``
    doubles as padding, as in Qwen2.

    Example:
        >>> tok = train_tokenizer(['"Epic Quest"', '"Epic Saga"'] * 20, vocab_size=300)
        >>> tok.convert_ids_to_tokens(tok('"Epic Quest"')["input_ids"])[0]
        '"Epic'
    """
    vocab_size = check_vocab_size(vocab_size)
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be an iterable of strings, not one string (that would train on its "
                        "characters)")
    if isinstance(added_tokens, (str, bytes)):
        raise TypeError(f"added_tokens must be a sequence of strings, not one string: {added_tokens!r}")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    if added_tokens:
        tokenizer.add_tokens(list(added_tokens))
    return tokenizer


class ItemTokenizer:
    """Every catalogue item as the token sequence a model writes for it, plus prompt rendering.

    Args:
        tokenizer: any Hugging Face tokenizer with an end-of-sequence token. For ``"sid"``, the
            SID tokens are added to it when missing.
        catalogue: the items.
        representation: ``"title"`` or ``"sid"``.
        template: the prompt template (default: ``TITLE_TEMPLATE`` or ``SID_TEMPLATE``).

    Example:
        >>> from recgym.data import make_synthetic
        >>> ds = make_synthetic(num_items=300, num_users=100)
        >>> items = ItemTokenizer.train(ds, "sid", vocab_size=600)
        >>> int(items.sequences[0][-1]) == items.eos_token_id
        True
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        catalogue: Catalogue,
        representation: str = "title",
        template: PromptTemplate | None = None,
    ) -> None:
        check_choice(representation, "representation", REPRESENTATIONS)
        _check_template(template)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token (eos_token)")
        _check_catalogue(catalogue, representation)
        self.tokenizer = tokenizer
        self.catalogue = catalogue
        self.representation = representation
        self.template = template or (TITLE_TEMPLATE if representation == "title" else SID_TEMPLATE)
        if representation == "sid":
            vocab = tokenizer.get_vocab()  # one dict: a pretrained vocabulary's costs ~60 ms to build
            missing = [t for t in sid_vocabulary(catalogue.sids) if t not in vocab]
            if missing:
                tokenizer.add_tokens(missing)
        self.eos_token_id: int = int(tokenizer.eos_token_id)
        self.pad_token_id: int = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.vocab_size: int = len(tokenizer)
        self.sequences: list[np.ndarray] = self._item_sequences()

    # -- items ---------------------------------------------------------------------------------

    def item_text(self, item: int) -> str:
        """The item as written in prompts: its title, or its SID tokens."""
        if self.representation == "title":
            return self.catalogue.titles[item]
        return format_sid(self.catalogue.sids[item])

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _item_sequences(self) -> list[np.ndarray]:
        header = self.template.response_header
        head = self._encode([header])[0]
        texts = [header + self.template.response(self.item_text(i)) for i in range(self.catalogue.num_items)]
        out = []
        for item, ids in enumerate(self._encode(texts)):
            if ids[: len(head)] != head:
                raise ValueError(
                    f"item {item}: the response header {header!r} tokenizes differently before this "
                    "item's text; choose a header that ends at a token boundary (e.g. with a newline)"
                )
            body = ids[len(head):]
            if not body:
                raise ValueError(f"item {item} has an empty token sequence")
            out.append(np.asarray([*body, self.eos_token_id], dtype=np.int64))
        return out

    def build_tree(self) -> PrefixTree:
        """The prefix tree over every item's token sequence (numpy; see :mod:`recgym.tree`).

        Items whose titles (or SIDs) are the same share one token sequence, so generating it is a
        hit for each of them: a :class:`~recgym.data.dataset.DataWarning` says how many, once per
        catalogue and representation.
        """
        from recgym.tree import PrefixTree

        tree = PrefixTree(self.sequences, vocab_size=self.vocab_size)
        warn_shared_sequences(tree, self.representation)
        return tree

    # -- prompts -------------------------------------------------------------------------------

    def prompt_text(self, history: Sequence[int]) -> str:
        """The prompt for a history of item ids (oldest first)."""
        tokenizer = getattr(self, "tokenizer", None)  # None while ItemTokenizer.train renders its corpus
        end = tokenizer.eos_token if tokenizer is not None else EOS_TOKEN
        return self.template.render([self.item_text(int(i)) for i in history], end=end)

    def encode_prompts(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids of many prompts at once (one batched tokenizer call).

        A compact template's prompt is built from the items' token sequences, not re-tokenized:
        the end token, then each history item's :attr:`sequences` row (which ends with the end
        token), so a prompt followed by an item's sequence is exactly the prompt of the history
        with that item appended.

        Example:
            >>> from recgym.data import make_synthetic
            >>> from recgym.prompts import COMPACT_TEMPLATE
            >>> items = ItemTokenizer.train(make_synthetic(num_items=300, num_users=100), "sid",
            ...                             template=COMPACT_TEMPLATE, vocab_size=600)
            >>> ids = items.encode_prompts([[3, 7]])[0]
            >>> ids == [items.eos_token_id, *items.sequences[3], *items.sequences[7]]
            True
        """
        if self.template.compact:
            return [[self.eos_token_id, *(t for i in h for t in self.sequences[int(i)].tolist())]
                    for h in histories]
        return self._encode([self.prompt_text(h) for h in histories])

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated tokens (special tokens kept, so the end token shows)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    # -- construction and persistence --------------------------------------------------------

    @classmethod
    def train(
        cls,
        dataset: Dataset,
        representation: str = "title",
        *,
        template: PromptTemplate | None = None,
        vocab_size: int = 4096,
        max_prompts: int = 2000,
        seed: int = 0,
    ) -> ItemTokenizer:
        """Train the offline default tokenizer on a dataset's prompts and item texts.

        The corpus is every item written as a response after the header plus up to
        ``max_prompts`` training prompts drawn with ``seed``. The arguments are checked before
        anything is trained.
        """
        check_choice(representation, "representation", REPRESENTATIONS)
        _check_catalogue(dataset.catalogue, representation)
        _check_template(template)
        vocab_size = check_vocab_size(vocab_size)
        max_prompts = check_int(max_prompts, "max_prompts", minimum=0)
        seed = check_int(seed, "seed", minimum=0)
        cat = dataset.catalogue
        sid_tokens = sid_vocabulary(cat.sids) if representation == "sid" else []
        probe = cls.__new__(cls)  # render texts with the template before a tokenizer exists
        probe.catalogue, probe.representation = cat, representation
        probe.template = template or (TITLE_TEMPLATE if representation == "title" else SID_TEMPLATE)
        source = dataset.train if len(dataset.train) else dataset.test
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(source), size=min(max_prompts, len(source)), replace=False)
        histories = [source.history[r, : source.history_len[r]].tolist() for r in rows.tolist()]
        header = probe.template.response_header
        corpus = [probe.prompt_text(h) for h in histories]
        corpus += [header + probe.template.response(probe.item_text(i)) for i in range(cat.num_items)]
        tokenizer = train_tokenizer(corpus, vocab_size=vocab_size, added_tokens=sid_tokens)
        return cls(tokenizer, cat, representation, probe.template)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the tokenizer (``save_pretrained``) and the representation and template."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        config = {"representation": self.representation, "template": asdict(self.template)}
        tmp = path / "recgym_items.json.tmp"
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, path / "recgym_items.json")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], catalogue: Catalogue) -> ItemTokenizer:
        """Rebuild from :meth:`save`'s folder and the catalogue.

        A missing or damaged ``recgym_items.json`` or ``tokenizer.json`` is a
        :class:`~recgym.data.DataFormatError` naming the file.
        """
        from transformers import AutoTokenizer

        from recgym.data.dataset import DataFormatError

        path = Path(path)
        file = path / "recgym_items.json"
        try:
            config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
            template = PromptTemplate(**config["template"])
            representation = config["representation"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise DataFormatError(file, f"damaged or missing ({type(err).__name__}: {err})") from err
        file = path / "tokenizer.json"
        try:
            if file.exists():
                json.loads(file.read_text(encoding="utf-8"))  # the tokenizers library's message names no file
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as err:  # json, tokenizers and transformers each raise their own types
            raise DataFormatError(file, f"damaged, the tokenizer cannot be read ({type(err).__name__}: "
                                        f"{str(err).splitlines()[0] if str(err) else ''})") from err
        return cls(tokenizer, catalogue, representation, template)


_WARNED_SHARED: set[tuple[str, int, bytes]] = set()  # (representation, items, digest): said once


def warn_shared_sequences(tree: PrefixTree, representation: str) -> int:
    """Warn (once per catalogue) when several items share a token sequence; returns how many items do.

    A generated title (or SID) denotes every item that has it, and the env and the metrics count it
    as a hit when the target is one of them: on a catalogue where items share titles HR/NDCG credit
    a title, not the item.

    Example:
        >>> from recgym.tree import PrefixTree
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_shared_sequences(PrefixTree([[1, 9], [1, 9], [2, 9]], vocab_size=10), "title")
        2
        >>> str(caught[0].message)[:66]
        '2 of 3 items share their title with another item (1 title names 2 '
    """
    import hashlib
    import warnings

    from recgym.data.dataset import DataWarning

    counts = np.diff(tree.item_offsets)
    shared = counts[counts > 1]
    if not len(shared):
        return 0
    items, groups = int(shared.sum()), len(shared)
    key = (representation, tree.num_items, hashlib.sha1(tree.item_nodes.tobytes()).digest())
    if key not in _WARNED_SHARED:
        _WARNED_SHARED.add(key)
        what = "title" if representation == "title" else "semantic ID"
        names = f"{groups} {what}s name" if groups > 1 else f"1 {what} names"
        warnings.warn(
            f"{items} of {tree.num_items} items share their {what} with another item ({names} {items} "
            f"items, up to {int(shared.max())} each): generating a shared {what} is a hit for every item "
            f"that has it, so HR/NDCG count the {what}, not the item, for these targets", DataWarning,
            stacklevel=3)
    return items


def _check_template(template: Any) -> None:
    if template is not None and not isinstance(template, PromptTemplate):
        raise TypeError(f"template must be a PromptTemplate or None, got {type(template).__name__}")


def _check_catalogue(catalogue: Catalogue, representation: str) -> None:
    if representation == "title" and catalogue.titles is None:
        raise ValueError("this catalogue has no titles: use representation='sid'")
    if representation == "sid" and catalogue.sids is None:
        raise ValueError("this catalogue has no semantic IDs: use representation='title'")
