"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`) over the runtime.

ModelInfer rows go into the same dynamic batcher as REST (shared batches), through the same
admission (in-flight cap, rate limit), bearer tokens (`authorization` metadata), deadlines (the
client's gRPC deadline, capped by REQUEST_TIMEOUT_S) and tracing; every call is counted per
method and status code. A ServingError becomes its gRPC status: a client's mistake is
INVALID_ARGUMENT with the codec's message, never UNKNOWN or INTERNAL. The server that runs it
is shared/grpcserver.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from prometheus_client import Counter, Histogram
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from shared.admission import Admission
from shared.errors import (
    InvalidInputError,
    ModelNotReadyError,
    OverloadedError,
    ServingError,
    UnauthorizedError,
)
from shared.grpccodec import request_arrays, response, tensor_metadata
from shared.metrics import LATENCY_BUCKETS
from shared.repository import ModelControl
from shared.v2routes import tensor_model

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.runtime import ModelRuntime

log = logging.getLogger("modelplane.grpc")
access_log = logging.getLogger("modelplane.access")
T = TypeVar("T")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
#: a ServingError's HTTP status as the gRPC status code of the same meaning
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ControlOffError(ServingError):
    """A model repository call while MODEL_CONTROL is off (REST: no such route)."""

    status, code, title = 501, "not_implemented", "Not Implemented"


class GrpcMetrics:
    """gRPC calls per method and status code, and their latency, on the app's registry."""

    def __init__(self, registry: Any, service: str) -> None:
        self.service = service
        self.calls = Counter(
            "modelplane_grpc_requests_total",
            "gRPC calls handled, by method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "modelplane_grpc_request_duration_seconds",
            "gRPC call latency, from the call's start to its answer.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def bearer_accepted(tokens: tuple[bytes, ...], metadata: Any) -> bool:
    """True when auth is off or the `authorization` metadata holds an accepted bearer token
    (every token compared in constant time, as over HTTP)."""
    if not tokens:
        return True
    value = next((v for k, v in metadata or () if k == "authorization"), "")
    scheme, _, given = str(value).partition(" ")
    supplied = given.strip().encode() if scheme.lower() == "bearer" else b""
    return any([hmac.compare_digest(supplied, token) for token in tokens])


#: a client cancels at its own deadline, which the server, having received `grpc-timeout`
#: a transit later, reaches a few ms after: a cancel this close to the deadline is the deadline
DEADLINE_SLACK_S = 0.1


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's methods for this service's tensor models, through the runtime."""

    def __init__(self, app: FastAPI) -> None:
        state = app.state
        self.runtime: ModelRuntime = state.runtime
        self.tokens: tuple[bytes, ...] = state.api_tokens
        self.admission: Admission = state.admission
        self.service_metrics = state.metrics
        self.metrics = GrpcMetrics(state.metrics.registry, state.metrics.service)
        self.control: ModelControl | None = state.model_control
        provider = getattr(state, "tracer_provider", None)
        self.tracer = provider.get_tracer("modelplane.grpc") if provider is not None else None

    # ---- the protocol ----------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return await self._call("ServerLive", context, self._live, protected=False)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return await self._call("ServerReady", context, self._ready, protected=False)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            extensions = ["model_repository"] if self.control is not None else []
            return pb.ServerMetadataResponse(
                name="modelplane", version="0.1.0", extensions=extensions
            )

        return await self._call("ServerMetadata", context, metadata)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def ready() -> Any:
            try:
                tensor_model(self.runtime, request.name, request.version or None)
            except ModelNotReadyError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", context, ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            model = tensor_model(self.runtime, request.name, request.version or None)
            inputs, outputs = model.model.tensor_specs()
            return pb.ModelMetadataResponse(
                name=model.name,
                versions=[model.version],
                platform="onnxruntime_onnx",
                inputs=[tensor_metadata(s) for s in inputs],
                outputs=[tensor_metadata(s) for s in outputs],
            )

        return await self._call("ModelMetadata", context, metadata)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def infer() -> Any:
            metadata = dict(context.invocation_metadata() or ())  # x-model-alias, rollout key
            model = tensor_model(
                self.runtime, request.model_name, request.model_version or None, metadata
            )
            inputs, _ = model.model.tensor_specs()
            items = model.model.tensor_items(request_arrays(request, inputs))
            timeout = self.runtime.settings.request_timeout_s
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = max(1e-3, min(timeout, remaining))
            route = f"/{SERVICE}/ModelInfer"
            request_id = request.id or None  # observed (drift, prediction log) as REST is
            outputs = await self.runtime.submit(model, items, route, request_id, timeout)
            return response(
                request, model.name, model.version, model.model.tensor_outputs(list(outputs))
            )

        return await self._call("ModelInfer", context, infer, work=True)

    # ---- the model repository extension (MODEL_CONTROL; shared/repository.py) ----------------
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def index() -> Any:
            entries = await self._control().index()
            models = [pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
            return pb.RepositoryIndexResponse(models=models)

        return await self._call("RepositoryIndex", context, index)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def load() -> Any:
            version = request.parameters.get("version")
            if version is None or version.WhichOneof("parameter_choice") != "string_param":
                raise InvalidInputError("give the version as the string parameter 'version'")
            await self._control().load(request.model_name, version.string_param)
            return pb.RepositoryModelLoadResponse()

        return await self._call("RepositoryModelLoad", context, load, work=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def unload() -> Any:
            await self._control().unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._call("RepositoryModelUnload", context, unload, work=True)

    def _control(self) -> ModelControl:
        if self.control is None:
            raise ControlOffError("model control is off (MODEL_CONTROL)")
        return self.control

    async def _live(self) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _ready(self) -> Any:
        return pb.ServerReadyResponse(ready=self.runtime.ready)

    # ---- what every call goes through -------------------------------------------------------
    async def _call(
        self,
        method: str,
        context: Any,
        handler: Callable[[], Awaitable[T]],
        *,
        protected: bool = True,
        work: bool = False,
    ) -> T:
        """Auth, admission, tracing, metrics and the access log around `handler`; a
        ServingError ends the call with its gRPC status and a clear message."""
        started = time.perf_counter()
        metadata = context.invocation_metadata() or ()
        request_id = _request_id(metadata)
        context.set_trailing_metadata((("x-request-id", request_id),))
        code, detail = grpc.StatusCode.OK, ""
        span = self._span(method)
        try:
            with span as current:
                try:
                    return await self._admitted(handler, context, metadata, protected, work)
                except ServingError as exc:
                    code, detail = STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.detail
                    if exc.status >= 500 and not isinstance(
                        exc, ModelNotReadyError | OverloadedError | ControlOffError
                    ):
                        log.error("call failed: %s", exc.detail, extra={"request_id": request_id})
                        detail = "the server failed to handle this call; see the log for its id"
                except asyncio.CancelledError:  # the client went away or its deadline passed
                    left = context.time_remaining()
                    expired = left is not None and left <= DEADLINE_SLACK_S
                    code = (
                        grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                    )
                    raise
                except Exception:
                    log.exception("call failed", extra={"request_id": request_id})
                    code = grpc.StatusCode.INTERNAL
                    detail = "the server failed to handle this call; see the log for its id"
                finally:
                    if current is not None:
                        current.set_attribute("rpc.grpc.status_code", code.value[0])
        finally:
            self._record(method, code, time.perf_counter() - started, request_id)
        await context.abort(code, detail)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def _admitted(
        self,
        handler: Callable[[], Awaitable[T]],
        context: Any,
        metadata: Any,
        protected: bool,
        work: bool,
    ) -> T:
        if protected and not bearer_accepted(self.tokens, metadata):
            raise UnauthorizedError()
        if not work:
            return await handler()
        refused = self.admission.enter(_scope(context, metadata))
        if refused is not None:
            reason, error = refused
            self.service_metrics.rejections.labels(self.metrics.service, reason).inc()
            raise error
        try:
            return await handler()
        finally:
            self.admission.leave()

    def _span(self, method: str) -> Any:
        if self.tracer is None:
            return contextlib.nullcontext()
        from opentelemetry.trace import SpanKind

        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}
        return self.tracer.start_as_current_span(
            f"{SERVICE}/{method}", kind=SpanKind.SERVER, attributes=attributes
        )

    def _record(self, method: str, code: grpc.StatusCode, seconds: float, request_id: str) -> None:
        service = self.metrics.service
        self.metrics.calls.labels(service, method, code.name).inc()
        self.metrics.duration.labels(service, method).observe(seconds)
        if method not in ("ServerLive", "ServerReady"):
            access_log.info(
                "gRPC %s %s %.1fms",
                method,
                code.name,
                seconds * 1000,
                extra={
                    "request_id": request_id,
                    "route": f"/{SERVICE}/{method}",
                    "status": code.name,
                    "latency_ms": round(seconds * 1000, 2),
                },
            )


def _request_id(metadata: Any) -> str:
    supplied = next((str(v) for k, v in metadata if k == "x-request-id"), "")
    if supplied and len(supplied) <= 64 and supplied.replace("-", "").replace(".", "").isalnum():
        return supplied
    return f"{random.getrandbits(128):032x}"


def _scope(context: Any, metadata: Any) -> dict[str, Any]:
    """What admission reads of a request (its bearer token, else its address), from a call."""
    headers = [(b"authorization", str(v).encode()) for k, v in metadata if k == "authorization"]
    peer = context.peer() or ""  # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:..."
    host = peer.partition(":")[2].rpartition(":")[0].strip("[]") or peer
    return {"headers": headers, "client": (host, 0)}
