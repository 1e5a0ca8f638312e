"""`python -m services.<name>`: flags, thread pinning, logging, uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from shared.layout import service_layout
from shared.listener import accept_queue_length, listening_socket, refuse_new_connections
from shared.logs import configure_logging, write_synchronously
from shared.supervisor import is_worker

if TYPE_CHECKING:
    from shared.service import Service

log = logging.getLogger("modelplane.serve")

#: listen backlog, keep-alive timeout and graceful timeout (uvicorn's) of every service; the
#: Kubernetes termination grace period must cover them (tests/unit/test_shutdown_budget.py)
BACKLOG = 2048
KEEP_ALIVE_S = 5.0
GRACEFUL_TIMEOUT_S = 10.0
#: longest wait for the accept queue to empty once new connections are refused
ACCEPT_QUEUE_WAIT_S = 2.0

# Pools that numpy/BLAS and OpenMP would size to every core. Inference threads are set
# explicitly on the onnxruntime session; these stay at 1 so pools never oversubscribe cores.
_MATH_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_math_threads() -> None:
    """Call before numpy is imported; explicit values from the environment win."""
    for var in _MATH_POOLS:
        os.environ.setdefault(var, "1")


def run(
    service: type[Service],
    default_port: int,
    argv: list[str] | None = None,
    default_grpc_port: int | None = None,
) -> int:
    """Parse --host/--port, build the service's settings and app, serve with one uvicorn worker
    (and gRPC on GRPC_PORT, else `default_grpc_port` when on `default_port`, for a service
    with tensor models)."""
    from pydantic import ValidationError

    from shared.app import create_app
    from shared.grpcserver import GrpcListen
    from shared.settings import settings_problems

    parser = argparse.ArgumentParser(prog=f"python -m services.{service.name}")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", default_port)))
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        default=os.environ.get("REUSE_PORT", "").lower() in ("1", "true", "yes"),
        help="bind with SO_REUSEPORT: several processes share the port, the kernel spreads "
        "connections across them; each joins once its models are ready (env REUSE_PORT)",
    )
    args = parser.parse_args(argv)
    try:
        settings = service.settings_class()
    except ValidationError as exc:  # a clear start-up error, never a traceback
        parser.exit(2, f"{parser.prog}: invalid settings: {settings_problems(exc)}\n")
    configure_logging(settings.log_level, settings.log_json)
    layout = service_layout(service, settings)
    if layout.processes > 1 and not is_worker():
        from shared.supervisor import supervise

        stop_within_s = settings.shutdown_drain_s + ACCEPT_QUEUE_WAIT_S + GRACEFUL_TIMEOUT_S + 5
        arguments = sys.argv[1:] if argv is None else argv
        return supervise(service, settings, layout, arguments, stop_within_s)
    # the catalog's gRPC port goes with the catalog's HTTP port: a process moved to another
    # port (tests, benchmarks, side-by-side runs) would collide on it, so it asks GRPC_PORT
    fallback = default_grpc_port if args.port == default_port else None
    grpc_port = settings.grpc_port if settings.grpc_port is not None else fallback
    grpc = GrpcListen(args.host, grpc_port, args.reuse_port) if grpc_port else None
    app = create_app(service, settings, grpc=grpc)
    runtime = app.state.runtime
    sock = listening_socket(args.host, args.port, reuse_port=args.reuse_port, backlog=BACKLOG)
    shared_port = " (REUSE_PORT: joined once ready)" if args.reuse_port else ""
    log.info("bound to %s:%d%s", args.host, args.port, shared_port)
    config = uvicorn.Config(
        JoinWhenReady(app, runtime) if args.reuse_port else app,
        workers=1,
        http=header_deadline_protocol(settings.header_timeout_s),
        log_config=None,
        backlog=BACKLOG,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S,
        access_log=False,
    )

    def stop_grpc() -> Awaitable[None] | None:
        grpc_server = getattr(app.state, "grpc_server", None)
        return grpc_server.stop() if grpc_server is not None else None

    DrainingServer(config, settings.shutdown_drain_s, runtime.start_draining, stop_grpc).run(
        sockets=[sock]
    )
    return 0


class JoinWhenReady:
    """ASGI wrapper for REUSE_PORT: the lifespan's startup completes (and uvicorn starts
    listening on the shared port) only once every model is loaded, so the kernel never hands
    a connection to a process that would answer 503 while its siblings are ready. A signal
    while loading ends the wait (the process then shuts down)."""

    def __init__(self, app: Any, runtime: Any) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_when_ready(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                while not (self.runtime.ready or self.runtime.draining):
                    await asyncio.sleep(0.05)
                log.info("models ready: joining the shared port")
            await send(message)

        await self.app(scope, receive, send_when_ready)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain window and a shutdown that loses no request.

    The first SIGTERM/SIGINT withdraws readiness at once and keeps serving (new connections
    too) for `drain_s`; a second signal during the window shuts down at once. Then, before
    uvicorn's graceful shutdown: new connections are refused (SYNs dropped, see
    shared/listener.py) and the connections the kernel already accepted are taken and served;
    every connection answers the request it is on (or the next one, if one arrives before its
    keep-alive timeout) with `Connection: close` and closes; uvicorn then waits for them, runs
    the lifespan's end and the process exits."""

    def __init__(
        self,
        config: Any,
        drain_s: float,
        start_draining: Any,
        stop_others: Callable[[], Awaitable[None] | None] = lambda: None,
    ) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.start_draining = start_draining
        self.stop_others = stop_others  # other listeners (gRPC), stopped beside HTTP
        self._drain_timer: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, plus writing the queued log lines before it re-raises the signal it
        caught (the default handler then ends the process without running atexit)."""
        self._loop = asyncio.get_running_loop()  # the signal handler hands its work to it
        with super().capture_signals():
            try:
                yield
            finally:
                write_synchronously()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """The signal handler: it runs on the main thread between two bytecodes of whatever
        the event loop was doing, possibly inside a metric update that holds
        prometheus_client's lock (in multiprocess mode one lock for every metric, and not
        reentrant). Draining sets the ready gauge, so run here it could wait on that lock
        for ever: the handler only hands the signal to the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.on_signal(sig)
        else:
            loop.call_soon_threadsafe(self.on_signal, sig)

    def on_signal(self, sig: int) -> None:
        """A signal, on the event loop: withdraw readiness, then shut down now or after the
        drain window."""
        self.start_draining()
        if self.drain_s <= 0 or self._drain_timer is not None:
            super().handle_exit(sig, None)
            return
        log.info("signal %d: draining for %.1fs before shutting down", sig, self.drain_s)
        self._drain_timer = threading.Timer(self.drain_s, super().handle_exit, (sig, None))
        self._drain_timer.daemon = True
        self._drain_timer.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        others = self.stop_others()
        stopping = asyncio.ensure_future(others) if others is not None else None
        listeners = [s for s in sockets or [] if s.fileno() >= 0]
        if all([refuse_new_connections(s) for s in listeners]) and listeners:
            await take_accepted_connections(listeners)
        await super().shutdown(sockets)
        if stopping is not None:
            await stopping


async def take_accepted_connections(listeners: list[socket.socket]) -> None:
    """Let the event loop accept what the kernel queued until every queue has stayed empty for
    a few polls (a handshake under way when SYNs started being dropped still completes)."""
    deadline = time.monotonic() + ACCEPT_QUEUE_WAIT_S
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        waiting = sum(accept_queue_length(s) for s in listeners)
        quiet = quiet + 1 if waiting == 0 else 0
    await asyncio.sleep(0)  # the last accepted connections get their protocol


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


class _CloseWhenDone:
    """Mixin for uvicorn's httptools protocol: graceful shutdown without a dropped request.

    uvicorn's own `shutdown()` closes every connection that is between requests at once; a
    keep-alive client may have just sent its next request on it (the bytes are in the socket
    buffer, not yet read), and closing then resets it unanswered. Here an in-flight request
    is answered with `Connection: close`; a connection between requests stays open until its
    keep-alive timeout, as it would without a shutdown, and a request arriving before that is
    answered the same way."""

    cycle: Any
    loop: Any
    transport: Any
    timeout_keep_alive: float
    timeout_keep_alive_task: Any
    timeout_keep_alive_handler: Any
    _closing = False

    def shutdown(self) -> None:
        self._closing = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
        elif self.timeout_keep_alive_task is None and not self.transport.is_closing():
            # accepted, no request yet: the same timeout as between two requests
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if self._closing:
            cycle.keep_alive = False
        super()._start_asgi_task(cycle, app)  # type: ignore[misc]


def header_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with the header
    deadline and, with httptools, the graceful close."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is part of the serve extra
        from uvicorn.protocols.http.h11_impl import H11Protocol

        bases: tuple[type, ...] = (_HeaderDeadline, H11Protocol)
    else:
        bases = (_CloseWhenDone, _HeaderDeadline, HttpToolsProtocol)
    return type("ServiceProtocol", bases, {"header_timeout_s": timeout_s})
