"""`python -m services.<name>`: flags, thread pinning, logging, uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from shared.logs import configure_logging, write_synchronously

if TYPE_CHECKING:
    from shared.service import Service

log = logging.getLogger("modelplane.serve")

# Pools that numpy/BLAS and OpenMP would size to every core. Inference threads are set
# explicitly on the onnxruntime session; these stay at 1 so pools never oversubscribe cores.
_MATH_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_math_threads() -> None:
    """Call before numpy is imported; explicit values from the environment win."""
    for var in _MATH_POOLS:
        os.environ.setdefault(var, "1")


def run(service: type[Service], default_port: int, argv: list[str] | None = None) -> int:
    """Parse --host/--port, build the service's settings and app, serve with one uvicorn worker."""
    from shared.app import create_app

    parser = argparse.ArgumentParser(prog=f"python -m services.{service.name}")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", default_port)))
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        default=os.environ.get("REUSE_PORT", "").lower() in ("1", "true", "yes"),
        help="bind with SO_REUSEPORT: several processes share the port, the kernel spreads "
        "connections across them (env REUSE_PORT)",
    )
    args = parser.parse_args(argv)
    settings = service.settings_class()
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(service, settings)
    where: dict[str, Any] = {"host": args.host, "port": args.port}
    shared_socket = _reuse_port_socket(args.host, args.port) if args.reuse_port else None
    if shared_socket is not None:  # kept referenced: uvicorn serves on its descriptor
        where = {"fd": shared_socket.fileno()}
    config = uvicorn.Config(
        app,
        **where,
        workers=1,
        http=header_deadline_protocol(settings.header_timeout_s),
        log_config=None,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        access_log=False,
    )
    DrainingServer(config, settings.shutdown_drain_s, app.state.runtime.start_draining).run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain window: the first SIGTERM/SIGINT withdraws readiness at
    once and keeps serving (new connections too) for `drain_s`, then uvicorn's graceful
    shutdown runs (stop accepting, finish in-flight requests, lifespan end). A second signal
    during the window shuts down at once."""

    def __init__(self, config: Any, drain_s: float, start_draining: Any) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.start_draining = start_draining
        self._drain_timer: threading.Timer | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, plus writing the queued log lines before it re-raises the signal it
        caught (the default handler then ends the process without running atexit)."""
        with super().capture_signals():
            try:
                yield
            finally:
                write_synchronously()

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.start_draining()
        if self.drain_s <= 0 or self._drain_timer is not None:
            super().handle_exit(sig, frame)
            return
        log.info("signal %d: draining for %.1fs before shutting down", sig, self.drain_s)
        self._drain_timer = threading.Timer(self.drain_s, super().handle_exit, (sig, None))
        self._drain_timer.daemon = True
        self._drain_timer.start()


class _HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol: a connection that has not sent a complete request head
    within `header_timeout_s` of connecting (or of its previous response) is closed.

    Uvicorn has no such timer of its own, and any byte received cancels its keep-alive timer,
    so without this a client dribbling one header byte at a time holds a connection open for
    ever (slowloris). A request counts as started once the parser has begun a new
    request/response cycle (`self.cycle` changes), which happens exactly when its headers end."""

    header_timeout_s: float
    cycle: Any
    loop: Any
    transport: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._deadline: Any = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._deadline is not None and self.cycle is not self._waiting_for:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        self._waiting_for = self.cycle  # headers have arrived once this has been replaced
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        cycle = self.cycle
        idle = cycle is None or (cycle is self._waiting_for and cycle.response_complete)
        if idle and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with the deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - httptools is part of the serve extra
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    return type("HeaderDeadlineProtocol", (_HeaderDeadline, base), {"header_timeout_s": timeout_s})


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes may bind too (one uvicorn worker each)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
