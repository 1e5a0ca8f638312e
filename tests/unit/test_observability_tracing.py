"""Optional OpenTelemetry tracing: off by default, switched on by the standard OTEL_* variables,
and a request through a real app becomes one server span (checked with an in-memory exporter)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.classify.service import ClassifyService
from shared.app import create_app
from shared.settings import ServingSettings
from shared.tracing import instrument, tracing_requested
from tests.unit.conftest import png_bytes, wait_ready


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_off_unless_the_standard_variables_ask(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing_requested(environ) is on


def test_a_request_becomes_a_server_span_with_route_status_and_request_id(
    settings: ServingSettings,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(ClassifyService, settings)
    instrument(app, "classify", provider)
    digit = np.zeros((8, 8), dtype=np.uint8)
    digit[1:7, 3:5] = 255
    with TestClient(app) as client:
        wait_ready(client)
        answer = client.post(
            "/v1/classify",
            content=png_bytes(digit),
            headers={"content-type": "image/png", "x-request-id": "trace-me-1"},
        )
        assert answer.status_code == 200
        assert (
            client.post(
                "/v1/classify", content=b"nope", headers={"content-type": "image/png"}
            ).status_code
            == 400
        )
    provider.shutdown()
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.attributes["http.route"] for s in spans] == ["/v1/classify", "/v1/classify"]
    statuses = [
        s.attributes.get("http.response.status_code", s.attributes.get("http.status_code"))
        for s in spans
    ]
    assert statuses == [200, 400]
    assert spans[0].attributes["http.response.header.x_request_id"] == ("trace-me-1",)
    assert all(s.name == "POST /v1/classify" for s in spans)  # health checks are not traced


def test_create_app_traces_only_when_the_environment_asks(
    settings: ServingSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not hasattr(create_app(ClassifyService, settings).state, "tracer_provider")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    app = create_app(ClassifyService, settings)
    assert isinstance(app.state.tracer_provider, TracerProvider)
    with TestClient(app) as client:  # the lifespan shuts the provider down on exit
        wait_ready(client)
