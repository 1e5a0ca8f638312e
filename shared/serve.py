"""`python -m services.<name>`: flags, thread pinning, logging, uvicorn."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

# Pools that numpy/BLAS and OpenMP would size to every core. Inference threads are set
# explicitly on the onnxruntime session; these stay at 1 so pools never oversubscribe cores.
_MATH_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_math_threads() -> None:
    """Call before numpy is imported; explicit values from the environment win."""
    for var in _MATH_POOLS:
        os.environ.setdefault(var, "1")


def run(service: Any, default_port: int, argv: list[str] | None = None) -> int:
    """Parse --host/--port, build settings and the app, and serve with one uvicorn worker."""
    import uvicorn

    from shared.app import create_app
    from shared.logs import configure_logging
    from shared.settings import ServingSettings

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
    settings = ServingSettings()
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(service, settings)
    where: dict[str, Any] = {"host": args.host, "port": args.port}
    shared_socket = _reuse_port_socket(args.host, args.port) if args.reuse_port else None
    if shared_socket is not None:  # kept referenced: uvicorn serves on its descriptor
        where = {"fd": shared_socket.fileno()}
    uvicorn.run(
        app,
        **where,
        workers=1,
        log_config=None,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        access_log=False,
    )
    return 0


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes may bind too (one uvicorn worker each)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
