"""SERVER_PROCESSES > 1: several service processes on one port, started and stopped together.

`python -m services.<name>` with SERVER_PROCESSES=N starts N copies of itself with REUSE_PORT
(the kernel spreads connections across them; each joins the port once its models are ready,
so readiness holds) and waits for them. What each guarantee becomes:

- metrics: one scrape per process. Process i serves /metrics on METRICS_PORT + i, so
  METRICS_PORT is required: on the shared main port a scrape would reach one process at
  random and the counters would jump between them;
- model swaps: every process follows the alias itself (RELOAD_INTERVAL_S), so for up to one
  interval two processes may answer from different versions (each answer names its version);
- graceful drain: SIGTERM/SIGINT to this process is passed on once to every child, which
  drains as a single process does (SHUTDOWN_DRAIN_S, then no request lost); this process
  exits when they all have, with the first non-zero status. Children get SIGTERM if this
  process dies (PR_SET_PDEATHSIG), and a child that dies alone stops the others, so the
  orchestrator sees one failed unit;
- a service holding state of its own in each process (`Service.single_process`, e.g. the
  similarity gallery that API calls add to) refuses to start with N > 1.

Each child gets ONNX_INTRA_OP_THREADS = the CPU budget / N unless it is set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from shared.layout import cpu_budget

if TYPE_CHECKING:
    from shared.service import Service
    from shared.settings import ServingSettings

log = logging.getLogger("modelplane.supervisor")

#: set in each child: its index (and the sign that it must not supervise again)
WORKER_ENV = "MODELPLANE_WORKER_INDEX"
_PR_SET_PDEATHSIG = 1


def is_worker() -> bool:
    return WORKER_ENV in os.environ


def check(service: Service, settings: ServingSettings) -> None:
    """Refuse a layout of several processes that would break a guarantee (SystemExit)."""
    count = settings.server_processes
    if service.single_process:
        raise SystemExit(
            f"{service.name} keeps state in each process (it is declared single_process); "
            f"SERVER_PROCESSES={count} would split it: run one process per instance"
        )
    if settings.metrics_port is None:
        raise SystemExit(
            f"SERVER_PROCESSES={count} needs METRICS_PORT: process i serves its metrics on "
            "METRICS_PORT + i (one scrape per process); on the shared port a scrape would "
            "reach one process at random"
        )


def _die_with_parent(libc: ctypes.CDLL) -> Callable[[], None]:
    """The child's pre-exec step: SIGTERM when this process dies. libc is loaded here, before
    the fork, so the child only makes one foreign call (no imports, no locks)."""

    def arm() -> None:  # pragma: no cover - runs in the child before exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return arm


def supervise(service: Service, settings: ServingSettings, argv: list[str]) -> int:
    """Start SERVER_PROCESSES children running `python -m services.<name> argv` and wait."""
    check(service, settings)
    count = settings.server_processes
    assert settings.metrics_port is not None  # check() refused otherwise
    threads = settings.onnx_intra_op_threads or max(1, cpu_budget() // count)
    children: list[subprocess.Popen[bytes]] = []
    arm = _die_with_parent(ctypes.CDLL(None)) if sys.platform == "linux" else None
    for index in range(count):
        env = {
            **os.environ,
            WORKER_ENV: str(index),
            "REUSE_PORT": "true",
            "SERVER_PROCESSES": "1",
            "METRICS_PORT": str(settings.metrics_port + index),
            "ONNX_INTRA_OP_THREADS": str(threads),
        }
        command = [sys.executable, "-m", f"services.{service.name}", *argv]
        # own session: a terminal's Ctrl-C reaches this process only, which passes it on once
        children.append(
            subprocess.Popen(
                command,
                env=env,
                start_new_session=True,
                preexec_fn=arm,
            )
        )
    log.info(
        "%d processes x %d intra-op threads on one port (REUSE_PORT), metrics on ports %d-%d",
        count,
        threads,
        settings.metrics_port,
        settings.metrics_port + count - 1,
    )
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(child.poll() is None for child in children):
        exited = [child for child in children if child.poll() is not None]
        if exited and not stopping:
            log.error("a service process exited with %d: stopping the others", exited[0].returncode)
            forward(signal.SIGTERM, None)
        time.sleep(0.1)
    # a child stopped by the signal passed on to it (uvicorn re-raises it) ended cleanly
    clean = {0, -signal.SIGTERM, -signal.SIGINT} if stopping else {0}
    return next((abs(c) or 1 for c in (ch.returncode for ch in children) if c not in clean), 0)
