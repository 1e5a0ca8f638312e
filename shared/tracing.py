"""Optional OpenTelemetry tracing of requests: off unless the standard OTEL_* variables ask.

A span per request (route template, method, status, the x-request-id the middleware assigns),
exported over OTLP/HTTP as configured by OTEL_EXPORTER_OTLP_* (or to stdout with
OTEL_TRACES_EXPORTER=console). Health and metrics routes are not traced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

UNTRACED = "/metrics,/livez,/readyz"


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """On when OTEL_TRACES_EXPORTER names an exporter or an OTLP endpoint is set."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def default_provider(service: str) -> TracerProvider:
    """A provider exporting in batches to OTLP/HTTP (or the console), named after the service;
    OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still override the resource."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": f"modelplane-{service}"}))
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def instrument(
    app: FastAPI, service: str, provider: TracerProvider | None = None
) -> TracerProvider:
    """Trace every request `app` serves; returns the provider (shut it down to flush)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    provider = provider or default_provider(service)
    if (inside := getattr(app, "serve_inside_stack", None)) is not None:
        inside()  # shared.app.ServiceApp: the span must wrap the serving middleware too
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=UNTRACED,
        http_capture_headers_server_response=["x-request-id"],
        exclude_spans=["receive", "send"],
    )
    return provider
