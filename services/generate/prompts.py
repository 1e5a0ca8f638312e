"""Prompts for the digit model: text that names exactly one digit maps to its class."""

from __future__ import annotations

import re

from shared.errors import InvalidParameterError

WORDS = {
    "zero": 0,
    "nought": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_TOKEN = re.compile(r"[a-z]+|\d+")
ACCEPTED = "a prompt naming one digit, e.g. 'a handwritten 7', 'seven' or '7'"


def digit_from_prompt(prompt: str, labels: list[str], field: str = "prompt") -> int:
    """The class index of the one digit `prompt` names; anything else is a 422 saying why."""
    found: set[int] = set()
    for token in _TOKEN.findall(prompt.lower()):
        if token.isdigit():
            if len(token) != 1:
                raise InvalidParameterError(
                    f"{field} {prompt!r} contains the number {token}; the digit model draws "
                    f"single digits: send {ACCEPTED}"
                )
            found.add(int(token))
        elif token in WORDS:
            found.add(WORDS[token])
    if len(found) != 1:
        what = "no digit" if not found else f"several digits ({', '.join(map(str, sorted(found)))})"
        raise InvalidParameterError(f"{field} {prompt!r} names {what}; send {ACCEPTED}")
    digit = str(found.pop())
    if digit not in labels:
        raise InvalidParameterError(
            f"{field} {prompt!r} names {digit}, which this model does not draw; it draws "
            f"{', '.join(labels)}"
        )
    return labels.index(digit)
