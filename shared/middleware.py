"""ASGI middleware: request id, admission, body size limit, per-route metrics, access log."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.admission import Admission, is_work
from shared.errors import PayloadTooLargeError
from shared.metrics import Metrics
from shared.problem import problem

access_log = logging.getLogger("modelplane.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


class ServingMiddleware:
    """Assigns a request id, admits or refuses work, caps the body, records every request."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        admission: Admission | None = None,
        model_version: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.admission = admission or Admission(0, 0.0, 0)
        self.model_version = model_version  # the version serving now, for the access log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID.match(supplied) else _new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        work = is_work(scope)
        refused = self.admission.enter(scope) if work else None
        try:
            if refused is not None:
                reason, error = refused
                self.metrics.rejections.labels(self.metrics.service, reason).inc()
                request = Request(scope)
                answer = problem(
                    error.status, error.title, error.detail, error.code, request, error.headers
                )
                await answer(scope, receive, send_with_id)
                return
            limited = _limit_body(receive, headers, self.max_body_bytes)
            try:
                await self.app(scope, limited, send_with_id)
            finally:
                if work:
                    self.admission.leave()
        finally:
            self._record(scope, status["code"], time.perf_counter() - started, request_id)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "GET")
        metrics, service = self.metrics, self.metrics.service
        metrics.child(metrics.requests, service, template, method, str(status)).inc()
        metrics.child(metrics.request_duration, service, template, method).observe(seconds)
        if template not in ("/metrics", "/livez", "/readyz"):
            access_log.info(
                "%s %s %d %.1fms",
                method,
                scope.get("path"),
                status,
                seconds * 1000,
                extra={
                    "request_id": request_id,
                    "route": template,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 2),
                    # the version that answered (a canary's), else the one serving now
                    "model_version": scope["state"].get("model_version") or self.model_version(),
                },
            )


def _new_request_id() -> str:
    """32 random hex digits, as uuid4().hex but without os.urandom: its syscall releases the
    GIL, and the event loop then waits (up to the 5 ms switch interval) for the preprocessing
    and inference threads to hand it back: in a py-spy profile at concurrency 32, uuid4 was
    a sixth of the event loop's samples. A request id need not be unguessable."""
    return f"{random.getrandbits(128):032x}"


def _limit_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> Receive:
    """A receive() refusing bodies over `limit`: by header up front, by count as they stream."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        size = int(declared)

        async def refuse() -> Message:
            raise PayloadTooLargeError(f"the request body is {size} bytes; the limit is {limit}")

        return refuse
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError(f"the request body exceeds the limit of {limit} bytes")
        return message

    return counting
