"""The hot path: a POST to a batched endpoint, without query parameters, skips FastAPI's router.

Per request FastAPI matches the path against every route (health, docs, the V2 routes ...)
and solves the route's dependencies, which builds and validates the query model even when the
query string is empty: in a profile of the event loop (classify, in process, 32 in flight)
that was about 40% of its CPU per request, more than the handler itself. Here such a request
goes straight to the same handler (`shared.routes.serve`: the same reader, lanes, rollout
and answer) with the query model's defaults, and its errors are rendered by the app's own
exception handlers, so the answer is the one the routed request gets, byte for byte.

Everything else takes the ordinary route: a query string (validated by FastAPI), bearer
tokens (the route's dependency), tracing (its instrumentation wraps the route), paths with
parameters, other methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.routes import serve
from shared.service import Lane

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.runtime import ModelRuntime
    from shared.service import Endpoint


class BatchedFastPath:
    """ASGI middleware (behind ServingMiddleware, in front of FastAPI's stack: shared/app.py):
    batched POSTs straight to their handler."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, runtime: ModelRuntime) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.runtime = runtime
        self._routes: dict[str, tuple[Endpoint, APIRoute, Any]] | None = None

    def _table(self) -> dict[str, tuple[Endpoint, APIRoute, Any]]:
        """path -> (endpoint, its route, its query defaults), built on the first request
        (the routes exist by then); empty when tokens or tracing need the full route."""
        state = self.fastapi_app.state
        if state.api_tokens or getattr(state, "tracer_provider", None) is not None:
            return {}
        routes = {r.path: r for r in _api_routes(self.fastapi_app.routes) if "POST" in r.methods}
        table = {}
        for endpoint in self.runtime.service.endpoints:
            route = routes.get(endpoint.path)
            if endpoint.lane is not Lane.BATCHED or endpoint.method != "POST" or route is None:
                continue
            if "{" in endpoint.path:
                continue
            try:  # the defaults an empty query string validates to
                query = endpoint.query() if endpoint.query is not None else None
            except ValidationError:  # a required query parameter: FastAPI answers 422
                continue
            table[endpoint.path] = (endpoint, route, query)
        return table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        if self._routes is None:
            self._routes = self._table()
        found = self._routes.get(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, route, query = found
        scope["app"] = self.fastapi_app  # as Starlette sets it: handlers read request.app
        scope["route"] = route  # the metrics' route template, as routing would set it
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive)
        try:
            response = await serve(endpoint, self.runtime, request, query)
        except Exception as exc:  # noqa: BLE001 - rendered by the app's own handlers below
            response = await self._render(request, exc)
        await response(scope, receive, send)

    async def _render(self, request: Request, exc: Exception) -> Any:
        """The answer the app's exception handlers give `exc` (re-raised if none claims it)."""
        handlers = self.fastapi_app.exception_handlers
        for kind in type(exc).__mro__:
            handler = handlers.get(kind)
            if handler is not None:
                return await handler(request, exc)
        raise exc


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """The APIRoutes of an app, those of included routers too (FastAPI keeps an included
    router whole, as `original_router`, rather than copying its routes)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (included := getattr(route, "original_router", None)) is not None and not getattr(
            route, "prefix", ""
        ):  # ours have no prefix; one would change the paths
            found += _api_routes(included.routes)
    return found
