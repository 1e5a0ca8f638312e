"""Realistic request payloads made from the data the models were trained on: held-out digits
as PNG, sentences in twelve languages, standard-library functions. No Locust import here, so
the runner and the tests can make them without gevent's monkey-patching."""

from __future__ import annotations

import base64
import json
import os
from functools import cache
from pathlib import Path

DIGITS_FILE = "LOADTEST_DIGITS"  # a JSON list of base64 PNGs, written once per run by run.py


@cache
def digit_pngs(count: int = 64) -> tuple[bytes, ...]:
    """Held-out handwritten digits (sklearn's, as the models were trained on) as PNG bytes.

    training.data imports torch (seconds); the runner makes the PNGs once and hands every
    Locust process the file named by LOADTEST_DIGITS instead."""
    path = os.environ.get(DIGITS_FILE)
    if path:
        return tuple(base64.b64decode(text) for text in json.loads(Path(path).read_text()))[:count]
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    images = load_splits()["test"].images[:count]
    return tuple(encode_png(gray_to_image(pixels)) for pixels in images)


def write_digits(path: Path) -> Path:
    """Save `digit_pngs()` for the Locust processes (see LOADTEST_DIGITS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([b64(png) for png in digit_pngs()]))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@cache
def sentences(per_language: int = 6) -> tuple[str, ...]:
    """Test-split sentences in the twelve languages the text classifier knows."""
    from training.text_data import language_split

    return tuple(language_split("test", per_language).texts)


@cache
def code_snippets(limit: int = 32, max_chars: int = 300) -> tuple[str, ...]:
    """Standard-library functions without their docstrings, as the summarizer was trained on;
    short ones, as a client asking for a summary sends (the summarizer's limit is 128 tokens:
    a longer function is a 400 by design, not a load-test result)."""
    from training.text_data import module_examples, stdlib_root

    examples = []
    for module in ("textwrap", "fnmatch", "shlex", "calendar"):
        examples += module_examples(stdlib_root() / f"{module}.py", module)
    return tuple(e.source for e in examples if len(e.source) <= max_chars)[:limit]


@cache
def accepted_snippets(url: str) -> tuple[str, ...]:
    """The `code_snippets` the summarizer served at `url` accepts (within its token limit,
    which depends on the model: a quick model reads 64 tokens, a full one 128): each is sent
    once with one new token, outside Locust's statistics, before the measured load."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        accepted = tuple(
            code
            for code in code_snippets()
            if client.post(
                "/v1/text/generate", json={"text": code, "max_new_tokens": 1}
            ).status_code
            == 200
        )
    if not accepted:
        raise RuntimeError(f"{url}: the summarizer accepts none of the load test's snippets")
    return accepted
