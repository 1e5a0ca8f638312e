"""The one error handler: every error becomes application/problem+json (RFC 9457)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from shared.errors import InferenceError, ModelNotReadyError, OverloadedError, ServingError

log = logging.getLogger("modelplane.errors")

PROBLEM_JSON = "application/problem+json"
#: nginx's status for a client that went away before the answer; recorded, never sent
CLIENT_CLOSED_REQUEST = 499


def problem(
    status: int,
    title: str,
    detail: str,
    code: str,
    request: Request,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """An RFC 9457 problem response carrying the request id."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def problem_event(exc: ServingError) -> dict[str, Any]:
    """The problem+json body of an error that ends an SSE stream (5xx internals stay in the log)."""
    internal = isinstance(exc, InferenceError)
    detail = "the server failed to handle this request; see the log" if internal else exc.detail
    return {
        "type": "about:blank",
        "title": exc.title,
        "status": exc.status,
        "code": exc.code,
        "detail": detail,
    }


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err.get("loc", ()))
        errors.append({"loc": loc, "msg": str(err.get("msg", "invalid"))})
    summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "invalid request"
    return summary, errors


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app fully matches at this request's path."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as problem+json; 5xx bodies reveal nothing internal."""

    async def on_serving_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServingError)
        detail = exc.detail
        if exc.status >= 500 and not isinstance(exc, ModelNotReadyError | OverloadedError):
            log.error(
                "request failed: %s",
                exc.detail,
                extra={"request_id": getattr(request.state, "request_id", None)},
                exc_info=exc,
            )
            detail = "the server failed to handle this request; see the log for its request id"
        if getattr(request.state, "protocol", None) == "v2":  # the protocol's own error body
            return JSONResponse({"error": detail}, status_code=exc.status, headers=exc.headers)
        return problem(exc.status, exc.title, detail, exc.code, request, exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        summary, errors = _validation_detail(exc)
        return problem(
            422,
            "Unprocessable Content",
            summary,
            "validation_error",
            request,
            extra={"errors": errors},
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(
            exc.status_code, str(exc.detail), str(exc.detail), "http_error", request, headers
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error",
            extra={"request_id": getattr(request.state, "request_id", None)},
            exc_info=exc,
        )
        return problem(
            500,
            "Internal Server Error",
            "the server failed to handle this request; see the log for its request id",
            "internal_error",
            request,
        )

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # the client closed the connection before sending its whole body: nobody is left to
        # answer, and it is not a server error (no 5xx for the error-ratio alert, no traceback)
        log.info(
            "client disconnected before its request was read",
            extra={"request_id": getattr(request.state, "request_id", None)},
        )
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(ServingError, on_serving_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
