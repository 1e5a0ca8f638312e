"""Several service processes on one port, started and stopped together.

`python -m services.<name>` starts the layout's processes (shared/layout.py: by default one
per core for a batched ONNX service, or SERVER_PROCESSES=N) as copies of itself with
REUSE_PORT (the kernel spreads connections across them; each joins the port once its models
are ready, so readiness holds) and waits for them. What each guarantee becomes:

- metrics: Prometheus multiprocess mode. Every process writes its values to one directory
  (a fresh one per start, removed at exit; PROMETHEUS_MULTIPROC_DIR); /metrics on the main
  port, whichever process answers, and METRICS_PORT (served by this process) read them all:
  counters and histograms add up, live gauges by their mode (shared/metrics.py);
- model swaps: every process follows the alias itself (RELOAD_INTERVAL_S), so for up to one
  interval two processes may answer from different versions (each answer names its version);
- limits: MAX_IN_FLIGHT, MAX_QUEUE and RATE_LIMIT_RPS hold per process (the kernel spreads
  connections evenly, so an instance admits about N times them);
- graceful drain: SIGTERM/SIGINT to this process is passed on once to every child, which
  drains as a single process does (SHUTDOWN_DRAIN_S, then no request lost); this process
  exits when they all have, with the first non-zero status. Children get SIGTERM if this
  process dies (PR_SET_PDEATHSIG), and a child that dies alone stops the others, so the
  orchestrator sees one failed unit;
- a service holding state of its own in each process (`Service.single_process`, e.g. the
  similarity gallery that API calls add to) runs one process by default and refuses
  SERVER_PROCESSES > 1.

Each child computes the same layout (same CPU budget, same settings) and so its own intra-op
threads and batches; MODELPLANE_WORKER_INDEX tells it that it is a child.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import mark_process_dead

from shared.metrics import MULTIPROC_ENV, AllProcesses, multiprocess_dir

if TYPE_CHECKING:
    from shared.layout import Layout
    from shared.service import Service
    from shared.settings import ServingSettings

log = logging.getLogger("modelplane.supervisor")

#: set in each child: its index (and the sign that it must not supervise again)
WORKER_ENV = "MODELPLANE_WORKER_INDEX"
_PR_SET_PDEATHSIG = 1


def is_worker() -> bool:
    return WORKER_ENV in os.environ


def worker_index() -> int:
    """This process's index among its instance's processes (0 when it runs alone)."""
    return int(os.environ.get(WORKER_ENV, "0"))


def check(service: Service, processes: int) -> None:
    """Refuse several processes where they would break a guarantee (SystemExit)."""
    if service.single_process:
        raise SystemExit(
            f"{service.name} keeps state in each process (it is declared single_process); "
            f"SERVER_PROCESSES={processes} would split it: run one process per instance"
        )


def _die_with_parent(libc: ctypes.CDLL) -> Callable[[], None]:
    """The child's pre-exec step: SIGTERM when this process dies. libc is loaded here, before
    the fork, so the child only makes one foreign call (no imports, no locks)."""

    def arm() -> None:  # pragma: no cover - runs in the child before exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return arm


def supervise(
    service: Service | type[Service],
    settings: ServingSettings,
    layout: Layout,
    argv: list[str],
    stop_within_s: float,
) -> int:
    """Start the layout's processes running `python -m services.<name> argv` and wait; once
    stopping, a process still running after `stop_within_s` (its whole shutdown sequence and
    some) is killed."""
    check(service, layout.processes)
    own_dir = multiprocess_dir() is None
    metrics_dir = tempfile.mkdtemp(prefix="modelplane-metrics-") if own_dir else multiprocess_dir()
    assert metrics_dir is not None
    try:
        command = [sys.executable, "-m", f"services.{service.name}", *argv]
        return run_children(command, settings, layout, metrics_dir, stop_within_s)
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def run_children(
    command: list[str],
    settings: ServingSettings,
    layout: Layout,
    metrics_dir: str,
    stop_within_s: float,
) -> int:
    """`command` once per process of `layout`, supervised (supervise); the exit status."""
    children: list[subprocess.Popen[bytes]] = []
    arm = _die_with_parent(ctypes.CDLL(None)) if sys.platform == "linux" else None
    for index in range(layout.processes):
        env = {
            **os.environ,
            WORKER_ENV: str(index),
            "REUSE_PORT": "true",
            MULTIPROC_ENV: metrics_dir,
        }
        # own session: a terminal's Ctrl-C reaches this process only, which passes it on once
        children.append(
            subprocess.Popen(
                command,
                env=env,
                start_new_session=True,
                preexec_fn=arm,
            )
        )
    exporter = None
    if settings.metrics_port is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(AllProcesses(metrics_dir))
        exporter, _ = start_http_server(settings.metrics_port, settings.metrics_addr, registry)
    log.info(
        "%d processes x %d intra-op threads x %d batches on one port (REUSE_PORT), metrics "
        "of all of them on %s",
        layout.processes,
        layout.intra_op_threads,
        layout.inference_workers,
        f"port {settings.metrics_port}" if exporter is not None else "/metrics",
    )
    stop_by: float | None = None  # set by the first stop signal: kill what runs after it

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stop_by
        if stop_by is None:
            stop_by = time.monotonic() + stop_within_s
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    dead: set[int] = set()
    while any(child.poll() is None for child in children):
        exited = [child for child in children if child.poll() is not None]
        for child in exited:
            if child.pid not in dead:  # its live gauges (ready, queue depth) leave the sums
                dead.add(child.pid)
                mark_process_dead(child.pid, metrics_dir)
        if exited and stop_by is None:
            log.error("a service process exited with %d: stopping the others", exited[0].returncode)
            forward(signal.SIGTERM, None)
        if stop_by is not None and time.monotonic() > stop_by:
            for child in children:
                if child.poll() is None:
                    log.error(
                        "process %d did not stop within %.0fs: killed", child.pid, stop_within_s
                    )
                    child.kill()
        time.sleep(0.1)
    if exporter is not None:
        exporter.shutdown()
        exporter.server_close()
    # a child stopped by the signal passed on to it (uvicorn re-raises it) ended cleanly
    clean = {0, -signal.SIGTERM, -signal.SIGINT} if stop_by is not None else {0}
    return next((abs(c) or 1 for c in (ch.returncode for ch in children) if c not in clean), 0)
