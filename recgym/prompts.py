"""Prompt templates: how a request's history becomes text, and how an item is written as a response.

``TITLE_TEMPLATE`` is the Alpaca-style prompt of BIGRec / D3 / ReRe (history as quoted titles, the
response a quoted title and a newline). ``SID_TEMPLATE`` is a short instruction prompt over
semantic-ID tokens. ``COMPACT_TEMPLATE`` has no English at all: the history's items are written back
to back, each as the exact tokens a model writes for it (ending with the end-of-sequence token, the
only separator), after one end token that opens the prompt. That is the prompt for models trained
from scratch (a fresh model gains nothing from an instruction, and every prompt token is compute),
and the one under which a user's whole sequence is one forward that teaches every position
(:mod:`agents.training.sft`'s sequence level). All are plain dataclasses: copy one with
:func:`dataclasses.replace` to override any part.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, fields

# The placeholders each formatted field may use, and the one it must use (else prompts would
# silently lack the history, or every item would be written the same).
_PLACEHOLDERS = {
    "instruction": {"noun", "nouns"}, "input": {"history", "noun", "nouns"}, "item_format": {"text"},
}
_REQUIRED = {"input": "history", "item_format": "text"}
LAYOUTS = ("instruction", "compact")
"""``instruction``: preamble, instruction, input and response header as text; ``compact``: the
history's item token sequences back to back (see the module docstring)."""

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)


@dataclass(frozen=True)
class PromptTemplate:
    """Turns item texts into a prompt and a response.

    The prompt always ends with ``response_header``; item token sequences are tokenized *after*
    that header (in context), so the prefix tree matches what a model writes there.

    Args:
        instruction: the task sentence; ``{noun}`` / ``{nouns}`` are replaced by the item nouns.
        input: the history sentence; ``{history}`` is the joined item texts.
        response_header: the text that ends every prompt and starts the response.
        item_format: how one item is written, in the history and as the response (``{text}``).
        separator: between history items.
        response_suffix: written after the response item, before the end-of-sequence token.
        preamble: text before the instruction.
        noun, nouns: e.g. ``"video game"`` / ``"video games"``.
        layout: ``"instruction"`` (the fields above make the prompt's text) or ``"compact"`` (no
            text: the history's item token sequences back to back after one end token; only
            ``item_format`` and ``response_suffix`` apply, and ``response_header`` must be empty).

    Every field is a string. ``input`` must contain ``{history}`` and ``item_format`` ``{text}``;
    ``instruction`` may use ``{noun}`` / ``{nouns}``, ``input`` also; any other placeholder is a
    ValueError at construction (write literal braces as ``{{`` and ``}}``).

    Example:
        >>> t = TITLE_TEMPLATE
        >>> print(t.render(["Tetris", "Doom"]).splitlines()[-3])
        The user has interacted with the following items before: "Tetris", "Doom"
        >>> t.response("Quake")
        '"Quake"\\n'
    """

    instruction: str
    input: str
    response_header: str = "### Response:\n"
    item_format: str = '"{text}"'
    separator: str = ", "
    response_suffix: str = "\n"
    preamble: str = ALPACA_PREAMBLE
    noun: str = "item"
    nouns: str = "items"
    layout: str = "instruction"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str):
                raise TypeError(f"{field.name} must be a string, got {value!r} ({type(value).__name__})")
        for name, allowed in _PLACEHOLDERS.items():
            text = getattr(self, name)
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as err:
                raise ValueError(f"{name} is not a valid format string ({err}); write literal braces as "
                                 f"{{{{ and }}}}: {text!r}") from None
            for placeholder in sorted(used):
                if placeholder not in allowed:  # attribute or index access included
                    raise ValueError(f"{name} has an unknown placeholder {{{placeholder}}}; it may use "
                                     f"{', '.join('{' + a + '}' for a in sorted(allowed))} (literal braces: "
                                     f"{{{{ and }}}}): {text!r}")
            if name in _REQUIRED and _REQUIRED[name] not in used:
                raise ValueError(f"{name} must contain {{{_REQUIRED[name]}}}, got {text!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: choose one of {LAYOUTS}")
        if self.compact and self.response_header:
            raise ValueError(f"a compact template writes items back to back, so its response_header must be "
                             f"empty, got {self.response_header!r}")

    @property
    def compact(self) -> bool:
        """Whether prompts are item token sequences back to back (``layout == "compact"``)."""
        return self.layout == "compact"

    def render(self, history_texts: Sequence[str], end: str = "<|endoftext|>") -> str:
        """The full prompt for a history (oldest first), ending with the response header.

        A compact template writes ``end`` (the tokenizer's end-of-sequence text), then each item's
        response followed by ``end``: the text of the token ids that
        :meth:`recgym.items.ItemTokenizer.encode_prompts` builds.
        """
        if self.compact:
            return end + "".join(self.response(t) + end for t in history_texts)
        history = self.separator.join(self.item_format.format(text=t) for t in history_texts)
        words = {"noun": self.noun, "nouns": self.nouns}
        return (
            f"{self.preamble}### Instruction:\n{self.instruction.format(**words)}\n\n"
            f"### Input:\n{self.input.format(history=history, **words)}\n\n{self.response_header}"
        )

    def response(self, text: str) -> str:
        """How the model writes one item after the header (without the end-of-sequence token)."""
        return self.item_format.format(text=text) + self.response_suffix


TITLE_TEMPLATE = PromptTemplate(
    instruction=(
        "Given a list of {nouns} the user has interacted with before, please recommend a new "
        "{noun} that the user likes to the user."
    ),
    input="The user has interacted with the following {nouns} before: {history}",
)

SID_TEMPLATE = PromptTemplate(
    instruction="Recommend the next {noun} for the user, written as its semantic ID.",
    input="History: {history}",
    item_format="{text}",
    separator=" ",
    response_suffix="",
    preamble="",
)

COMPACT_TEMPLATE = PromptTemplate(
    instruction="", input="{history}", response_header="", item_format="{text}", separator="",
    response_suffix="", preamble="", layout="compact",
)
COMPACT_TITLE_TEMPLATE = PromptTemplate(
    instruction="", input="{history}", response_header="", separator="", preamble="", layout="compact",
)


def template_named(name: str, representation: str) -> PromptTemplate:
    """The built-in template ``name`` (``"instruction"`` or ``"compact"``) for a representation.

    ``instruction`` is :data:`TITLE_TEMPLATE` / :data:`SID_TEMPLATE`; ``compact`` is
    :data:`COMPACT_TITLE_TEMPLATE` (titles quoted, a newline after each, as the instruction
    template writes them) / :data:`COMPACT_TEMPLATE` (SID tokens alone).

    Example:
        >>> template_named("compact", "sid").layout
        'compact'
        >>> template_named("chat", "sid")
        Traceback (most recent call last):
        ...
        ValueError: template='chat': choose one of ('instruction', 'compact')
    """
    if name not in LAYOUTS:
        raise ValueError(f"template={name!r}: choose one of {LAYOUTS}")
    if name == "compact":
        return COMPACT_TITLE_TEMPLATE if representation == "title" else COMPACT_TEMPLATE
    return TITLE_TEMPLATE if representation == "title" else SID_TEMPLATE
