"""The gRPC server of a service, beside HTTP: the protocol, grpc.health.v1 and reflection.

One grpc.aio server on the app's event loop, started and stopped by its lifespan (shared/app.py)
with the service of shared/grpcservice.py. grpc.health.v1 follows readiness (NOT_SERVING while
loading or draining); server reflection lists the services; a shutdown refuses new calls and
lets the ones in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from shared.grpcservice import SERVICE, InferenceServicer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.runtime import ModelRuntime

log = logging.getLogger("modelplane.grpc")

#: how long a shutdown waits for calls in flight (uvicorn's graceful timeout, shared/serve.py)
GRACE_S = 10.0
#: how often grpc.health.v1 looks at readiness (loads and drains are seconds apart)
HEALTH_EVERY_S = 0.25


@dataclass(frozen=True)
class GrpcListen:
    """Where the gRPC server listens; `reuse_port` as with REUSE_PORT for HTTP (else a port
    in use is an error, not silently shared: gRPC turns SO_REUSEPORT on by default)."""

    host: str
    port: int
    reuse_port: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Health(health.aio.HealthServicer):
    """grpc.health.v1 for the server ("") and the protocol's service: SERVING while the
    runtime is ready, NOT_SERVING while it loads or drains. Check looks at readiness when
    asked; Watch streams see a change within HEALTH_EVERY_S (`follow`)."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self.ready = ready
        self.shown: bool | None = None

    async def show(self, ready: bool) -> None:
        if ready is self.shown:
            return
        self.shown = ready
        status = health_pb2.HealthCheckResponse
        for name in ("", SERVICE):
            await self.set(name, status.SERVING if ready else status.NOT_SERVING)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.show(self.ready())
        return await super().Check(request, context)

    async def follow(self) -> None:
        while True:
            await self.show(self.ready())
            await asyncio.sleep(HEALTH_EVERY_S)


class GrpcServer:
    """The gRPC server of one app: the protocol, grpc.health.v1 and reflection."""

    def __init__(self, app: FastAPI, listen: GrpcListen) -> None:
        limit = app.state.settings.max_body_bytes  # the same cap as an HTTP body
        self.runtime: ModelRuntime = app.state.runtime
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if listen.reuse_port else 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), self.server)
        self.health = Health(lambda: self.runtime.ready)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.listen = listen
        self._watch: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Bind (a port in use is a RuntimeError naming it) and serve."""
        try:
            bound = self.server.add_insecure_port(self.listen.address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {self.listen.address}: {exc}") from exc
        if bound == 0:
            raise RuntimeError(f"cannot listen for gRPC on {self.listen.address}")
        await self.server.start()
        self._watch = asyncio.create_task(self.health.follow())
        log.info("gRPC (Open Inference Protocol) on %s", self.listen.address)

    async def stop(self, grace_s: float = GRACE_S) -> None:
        """Refuse new calls, let the ones in flight finish (up to `grace_s`), then close. Once:
        HTTP's shutdown starts it (beside uvicorn's graceful wait, so one grace bounds both)
        and the lifespan's end awaits the same stop."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
