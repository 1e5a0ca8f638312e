"""configure_logging: JSON lines on stderr, written by a background thread, all flushed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from shared import logs


@pytest.fixture
def restored_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    if logs._listener is not None:
        logs._listener.stop()
        logs._listener = None
    root.handlers[:], root.level = handlers, level


def test_records_become_json_lines_with_extras_and_tracebacks(
    restored_root: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logs.configure_logging("INFO", json_lines=True)
    log = logging.getLogger("modelplane.access")
    log.info("POST /v1/classify 200", extra={"request_id": "abc", "latency_ms": 1.5})
    log.debug("below the level")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("modelplane.service").exception("predict failed")
    logs.configure_logging("WARNING", json_lines=False)  # stops the first writer: all written
    logging.getLogger("modelplane").warning("plain now")
    logs._listener.stop()  # type: ignore[union-attr]
    logs._listener = None
    lines = capfd.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines[:2])
    assert first["message"] == "POST /v1/classify 200" and first["level"] == "info"
    assert (first["request_id"], first["latency_ms"], first["logger"]) == (
        "abc",
        1.5,
        "modelplane.access",
    )
    assert second["message"] == "predict failed"
    assert "ValueError: boom" in second["traceback"]
    assert "below the level" not in "".join(lines)
    assert lines[-1].endswith("WARNING modelplane: plain now")


def test_write_synchronously_flushes_the_queue_and_logs_directly_after(
    restored_root: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logs.configure_logging("INFO", json_lines=True)
    logging.getLogger("uvicorn.error").info("Application shutdown complete.")
    logs.write_synchronously()  # what DrainingServer does before uvicorn re-raises a signal
    assert logs._listener is None
    assert "Application shutdown complete." in capfd.readouterr().err
    logging.getLogger("uvicorn.error").info("Finished server process")
    (line,) = capfd.readouterr().err.splitlines()  # written at once, no thread involved
    assert json.loads(line)["message"] == "Finished server process"
