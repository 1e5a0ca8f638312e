"""Server-sent events as a test reads them: (event name, JSON data) per event."""

from __future__ import annotations

import json
from typing import Any


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events
