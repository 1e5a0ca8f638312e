"""Suite-wide hooks."""

from __future__ import annotations

import signal
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure() -> None:
    """SIGTERM (a CI timeout, `kill`) becomes an interrupt, so fixtures still stop the
    processes they started instead of leaving MLflow and uvicorn orphaned."""
    signal.signal(signal.SIGTERM, _interrupt)
