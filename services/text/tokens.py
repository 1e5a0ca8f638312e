"""Text checks and the bundle's tokenizer, shared by the classifier and the summarizer."""

from __future__ import annotations

from shared.bundle import Bundle
from shared.errors import InvalidInputError

TOKENIZER = "tokenizer.json"


def check_text(text: str, field: str, max_chars: int) -> None:
    """Empty, too long, holding NUL or not encodable as UTF-8 (lone surrogates): the client's
    mistake, said plainly (nothing is silently replaced)."""
    if not text.strip():
        raise InvalidInputError(f"{field} is empty")
    if len(text) > max_chars:
        raise InvalidInputError(f"{field} has {len(text)} characters; the limit is {max_chars}")
    if (nul := text.find("\x00")) >= 0:
        raise InvalidInputError(f"{field} contains a NUL character at {nul}; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{field} is not valid Unicode: lone surrogate {text[exc.start]!r} at {exc.start}"
        ) from exc


class Tokens:
    """A bundle's tokenizer (Hugging Face `tokenizers`, no torch) with the model's length limit."""

    def __init__(self, bundle: Bundle) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(bundle.file(TOKENIZER)))
        self.max_len = int(bundle.preprocessing["max_len"])

    def encode(self, text: str, field: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.max_len:
            raise InvalidInputError(
                f"{field} is {len(ids)} tokens long; the model accepts at most {self.max_len}"
            )
        return ids
