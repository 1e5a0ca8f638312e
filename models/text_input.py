"""How a text becomes a text model's input; training and the text service both call this.

The bundle names the format (`preprocessing.input_format`), so a model always sees what it was
trained on.
"""

from __future__ import annotations

import re

RAW_INPUT, WORDS_INPUT = "raw", "identifier-words"
_CODE_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|\S")
_WORD_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_DEF_NAME = re.compile(r"\bdef\s+([A-Za-z_][A-Za-z0-9_]*)")


def identifier_words(identifier: str) -> list[str]:
    """`_convert_other` → ["convert", "other"], `TarFile` → ["tar", "file"] (lower case)."""
    return [part.lower() for part in _WORD_PART.findall(identifier)]


def code_input(source: str, input_format: str = WORDS_INPUT) -> str:
    """The summarizer's view of a source: the function name's words first, then the code with
    every identifier split into lower-case words and tokens separated by single spaces.

    Summaries reuse the words of names (`is_subnormal` → "Return True if ... subnormal"); as
    separate words they become the same BPE tokens the summary uses, which the tied embeddings
    let the decoder copy. Whitespace carries little here and costs tokens, so more of the body
    fits the token limit. Training and the service both call this (the bundle names the
    format), so a model always sees what it was trained on. `raw` leaves the text alone.
    """
    if input_format == RAW_INPUT:
        return source
    if input_format != WORDS_INPUT:
        raise ValueError(f"unknown summarizer input format {input_format!r}")
    pieces: list[str] = []
    for token in _CODE_TOKEN.findall(source):
        is_name = token[0].isalpha() or token[0] == "_"
        pieces.extend((identifier_words(token) or [token]) if is_name else [token])
    name = _DEF_NAME.search(source)
    head = [*identifier_words(name.group(1)), ":"] if name else []
    return " ".join(head + pieces)
