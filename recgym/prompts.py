"""Prompt templates: how a request's history becomes text, and how an item is written as a response.

``TITLE_TEMPLATE`` is the Alpaca-style prompt of BIGRec / D3 / ReRe (history as quoted titles, the
response a quoted title and a newline). ``SID_TEMPLATE`` is a compact prompt over semantic-ID
tokens. Both are plain dataclasses: copy one with :func:`dataclasses.replace` to override any part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

    def render(self, history_texts: Sequence[str]) -> str:
        """The full prompt for a history (oldest first), ending with the response header."""
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
