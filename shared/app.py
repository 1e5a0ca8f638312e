"""create_app(service, settings): the FastAPI app every service runs in."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import start_http_server
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.admission import Admission
from shared.errors import UnauthorizedError
from shared.fastpath import BatchedFastPath
from shared.health import add_health
from shared.layout import service_layout, with_layout
from shared.metrics import Metrics
from shared.middleware import ServingMiddleware
from shared.problem import install_error_handlers
from shared.repository import ModelControl, check_enabled, repository_router
from shared.requests import error_responses
from shared.routes import build_router
from shared.runtime import ModelRuntime
from shared.service import Service
from shared.settings import ServingSettings, available_cores
from shared.supervisor import is_worker
from shared.tracing import instrument, tracing_requested
from shared.v2routes import v2_health_router, v2_router

if TYPE_CHECKING:
    from shared.grpcserver import GrpcListen

log = logging.getLogger("modelplane.app")


_bearer = HTTPBearer(auto_error=False, description="API_TOKEN (when the service sets one)")


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With API_TOKEN (or API_TOKEN_FILE) set, the /v1 and /v2 routes need a bearer token.

    Every accepted token is compared in constant time, and all of them are compared, so
    neither the answer's timing nor its body says anything about the tokens."""
    tokens: tuple[bytes, ...] = request.app.state.api_tokens
    if not tokens:
        return
    given = credentials.credentials.encode() if credentials else b""
    matches = [hmac.compare_digest(given, token) for token in tokens]
    if not any(matches):
        raise UnauthorizedError()


def protection(settings: ServingSettings) -> list[Any]:
    """The dependencies of /v1 and /v2 routes: the bearer check when tokens are configured,
    nothing otherwise (so the OpenAPI schema only asks for a token when one is needed)."""
    return [Depends(require_token)] if settings.api_tokens() else []


def service_settings(service: Service, settings: ServingSettings | None) -> ServingSettings:
    """`settings` as the service's own settings class (its defaults below anything set)."""
    wanted = service.settings_class
    if settings is None:
        return wanted()
    if isinstance(settings, wanted):
        return settings
    return wanted(**settings.model_dump(exclude_unset=True))


class ServiceApp(FastAPI):
    """A FastAPI app with the serving middleware in front of FastAPI's own stack.

    Every request meets ServingMiddleware first (request id, admission, body limit, metrics,
    access log), then a batched POST goes straight to its handler (shared/fastpath.py) and
    anything else through FastAPI's middleware (error pages, its body limit, exception
    handlers) and router, as a plain FastAPI app. Behind FastAPI's stack each layer wraps
    send and receive once more: about a tenth of the event loop's time per request on a
    fast model (docs/performance.md)."""

    front: ASGIApp | None = None
    serving: dict[str, Any]  # ServingMiddleware's arguments

    def serve_inside_stack(self) -> None:
        """ServingMiddleware as an ordinary middleware of FastAPI's stack, without the fast
        path: tracing (shared/tracing.py) puts its span around the stack, and the span must
        see what the middleware does (its x-request-id)."""
        if self.front is not None:
            self.front = None
            self.add_middleware(ServingMiddleware, **self.serving)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own middleware stack and router."""
        await super().__call__(scope, receive, send)


def create_app(
    service: Service | type[Service],
    settings: ServingSettings | None = None,
    *,
    load: bool = True,
    grpc: GrpcListen | None = None,
) -> ServiceApp:
    """Build a service app: lifespan loading, health, metrics, errors, limits, docs and the
    declared endpoints. `load=False` leaves loading to the caller (tests drive it directly);
    `grpc` also serves the tensor models over gRPC there (shared/grpcserver.py)."""
    service = service() if isinstance(service, type) else service
    settings = service_settings(service, settings)
    layout = service_layout(service, settings)
    settings = with_layout(service, settings)
    name = service.name
    metrics = Metrics(name)
    runtime = ModelRuntime(service, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "starting %s: models %s, onnx intra-op threads %d, inference workers %d, "
            "max batch %d, cores %d",
            name,
            ", ".join(slot.source.uri for slot in runtime.enabled_slots() if slot.source),
            settings.intra_op_threads(),
            settings.inference_workers,
            settings.max_batch_size,
            available_cores(),
        )
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(asyncio.to_thread(runtime.serve_models, loop)) if load else None
        exporter = None
        if settings.metrics_port is not None and not is_worker():  # else the supervisor's
            exporter, _ = start_http_server(
                settings.metrics_port, settings.metrics_addr, registry=metrics.scrape
            )
            log.info("metrics on %s:%d", settings.metrics_addr, settings.metrics_port)
        grpc_server = None
        if grpc is not None and any(spec.tensor for spec in service.models):
            from shared.grpcserver import GrpcServer

            grpc_server = GrpcServer(app, grpc)
            await grpc_server.start()
            app.state.grpc_server = grpc_server  # shared/serve.py stops it beside HTTP
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()  # calls in flight finish; new ones are refused
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()
            if (provider := getattr(app.state, "tracer_provider", None)) is not None:
                provider.shutdown()  # flushes the spans still batched
            await runtime.aclose()
            if task is not None:
                await asyncio.wait({task}, timeout=5)

    app = ServiceApp(
        title=f"modelplane {name}",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks look the global providers up on every request
        # (environment reads included: ~4% of the event loop at concurrency 32); tracing, when
        # asked for, is shared.tracing's instrumentation with its own provider
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.api_tokens = settings.api_tokens()
    # one admission for every protocol: HTTP and gRPC share the in-flight cap and rate limits
    app.state.admission = Admission(
        settings.max_in_flight, settings.rate_limit_rps, settings.rate_limit_burst
    )
    install_error_handlers(app)
    app.serving = {
        "metrics": metrics,
        "max_body_bytes": settings.max_body_bytes,
        "admission": app.state.admission,
        "model_version": lambda: runtime.current.version if runtime.current else None,
    }
    # ids, admission, limits, metrics first; then the fast path, else FastAPI's stack
    app.front = ServingMiddleware(BatchedFastPath(app.stack, app, runtime), **app.serving)
    _add_docs(app)
    add_health(app, runtime, layout, protection(settings))
    protected = protection(settings)
    routers = [build_router(service, runtime)]
    app.state.model_control = None
    if any(spec.tensor for spec in service.models):
        app.include_router(v2_health_router())  # probes: no token, like /readyz
        routers.append(v2_router())
        if settings.model_control:
            check_enabled(settings)
            app.state.model_control = ModelControl(runtime)
            routers.append(repository_router())
    for router in routers:
        app.include_router(_document_refusals(router), dependencies=protected)
    if tracing_requested():
        app.state.tracer_provider = instrument(app, name)
    return app


def _document_refusals(router: APIRouter) -> APIRouter:
    """Any work route can be refused before it runs (body too large, rate limit, in-flight cap,
    not ready): every one says so in its OpenAPI responses, whatever its service declared."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.methods - {"GET", "HEAD", "OPTIONS"}:
            for code, spec in error_responses(413, 429, 503).items():
                route.responses.setdefault(code, spec)
    return router


def _add_docs(app: FastAPI) -> None:
    """Swagger UI 5 (it renders the OpenAPI 3.1 FastAPI emits; 4.x cannot) served from the
    assets the installed fastapi-swagger package ships, so the docs work offline."""
    assets = resources.files("fastapi_swagger") / "resources"

    app.mount("/docs/static", StaticFiles(directory=str(assets)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )
