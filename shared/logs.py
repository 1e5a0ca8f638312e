"""Logging: JSON lines (or plain text) carrying the request id when there is one."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Route modelplane and uvicorn logs through one handler on stderr.

    Records are formatted where they are logged, then written by one background thread: a
    write to stderr releases the GIL, and an event loop writing an access line per request
    would then wait for the busy preprocessing and inference threads to hand it back."""
    global _listener
    if _listener is not None:
        _listener.stop()  # flushes what the previous configuration still held
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(lines)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))  # already formatted by `handler`
    _listener = logging.handlers.QueueListener(lines, writer)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # the access log is replaced by modelplane.access, which carries the request id and route
    logging.getLogger("uvicorn.access").disabled = True


@atexit.register
def write_synchronously() -> None:
    """Write every queued record now and log without the background thread from here on: at
    exit, and before uvicorn re-raises a shutdown signal (which kills without atexit)."""
    global _listener
    if _listener is None:
        return
    _listener.stop()
    _listener = None
    root = logging.getLogger()
    for index, handler in enumerate(root.handlers):
        if isinstance(handler, logging.handlers.QueueHandler):
            direct = logging.StreamHandler(sys.stderr)
            direct.setFormatter(handler.formatter)
            root.handlers[index] = direct
