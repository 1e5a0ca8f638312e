"""/livez, /readyz, /metrics and GET /v1/model: what a probe, Prometheus or a person asks."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.errors import ModelNotReadyError
from shared.layout import Layout
from shared.requests import error_responses
from shared.runtime import ModelRuntime
from shared.settings import available_cores
from shared.slots import ModelSlot
from shared.supervisor import worker_index


def add_health(app: FastAPI, runtime: ModelRuntime, layout: Layout, protected: list[Any]) -> None:
    """The probes (no token), /metrics (unless on its own port) and GET /v1/model."""

    @app.get("/livez", tags=["health"], summary="The process is alive (never checks the model).")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="200 once every model is loaded, verified and warm.",
        responses=error_responses(503),
    )
    async def readyz() -> dict[str, Any]:
        if not runtime.ready:
            reason = runtime.not_ready_reason()
            raise ModelNotReadyError(reason if runtime.draining else f"not ready: {reason}")
        models = {slot.spec.key: slot.current.info() for slot in runtime.served_slots()}
        answer = {"status": "ready", "model": runtime.require().info(), "models": models}
        challengers = {  # a rollout's second version: reported, never a reason to be unready
            slot.spec.key: slot.challenger.info() if slot.challenger else None
            for slot in runtime.served_slots()
            if slot.challenger_source is not None
        }
        return {**answer, "challengers": challengers} if challengers else answer

    if runtime.settings.metrics_port is None:

        @app.get(
            "/metrics",
            tags=["health"],
            summary="Prometheus metrics.",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
        )
        async def prometheus_metrics() -> Response:
            return Response(generate_latest(runtime.metrics.scrape), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/model",
        tags=["model"],
        summary="The models being served and their input specs.",
        responses=error_responses(401, 503),
        dependencies=protected,
    )
    async def model_info() -> JSONResponse:
        return JSONResponse(describe(runtime, layout))

    @app.get(
        "/v1/model/drift",
        tags=["model"],
        summary="Drift of live inputs and outputs against the bundle's reference, per model.",
        responses=error_responses(401, 503),
        dependencies=protected,
    )
    async def model_drift() -> JSONResponse:
        runtime.require()
        return JSONResponse(await asyncio.to_thread(drift_report, runtime))


def drift_report(runtime: ModelRuntime) -> dict[str, Any]:
    """GET /v1/model/drift: each served model's window tested now (or why it is not)."""
    models: dict[str, Any] = {}
    for slot in runtime.served_slots():
        loaded = slot.current
        monitor = loaded.drift
        if monitor is None:
            why = "the bundle has no drift reference for this variant (export it again)"
            if not runtime.settings.drift_enabled:
                why = "drift is off (DRIFT_ENABLED=false)"
            models[slot.spec.key] = {**loaded.info(), "available": False, "reason": why}
            continue
        monitor.check()
        models[slot.spec.key] = {**loaded.info(), "available": True, **monitor.report()}
    drifted = any(entry.get("drifted", False) for entry in models.values())
    return {"drifted": drifted, "models": models}


def describe(runtime: ModelRuntime, layout: Layout) -> dict[str, Any]:
    """GET /v1/model: the primary model's details at the top, every model under `models`."""
    primary = runtime.require()
    settings = runtime.settings
    models = {
        slot.spec.key: {
            **slot.current.details(),
            **slot.current.model.describe(),
            **({"challenger": challenger(slot)} if slot.challenger_source else {}),
        }
        for slot in runtime.served_slots()
    }
    return {
        **primary.details(),
        "batching": {
            "max_batch_size": runtime.batch_config.max_batch_size,
            "max_delay_ms": runtime.batch_config.max_delay_ms,
            "max_queue": runtime.batch_config.max_queue,
        },
        "limits": {
            "max_in_flight": settings.max_in_flight,
            "rate_limit_rps": settings.rate_limit_rps,
            "max_body_bytes": settings.max_body_bytes,
            "request_timeout_s": settings.request_timeout_s,
        },
        "layout": {**layout.to_dict(), "process_index": worker_index()},
        "threads": {
            "cores": available_cores(),
            "onnx_intra_op": settings.intra_op_threads(),
            "inference_workers": settings.inference_workers,
            "preprocess_workers": runtime.preprocess_workers,
        },
        "rollout": {
            "challenger_alias": settings.challenger_alias,
            "canary_percent": settings.canary_percent,
            "shadow_percent": settings.shadow_percent,
            "key_header": settings.rollout_key_header,
        },
        "pools": {
            name: {"workers": pool.workers, "queue": pool.queue}
            for name, pool in runtime.pools.items()
        },
        **primary.model.describe(),
        "models": models,
    }


def challenger(slot: ModelSlot) -> dict[str, Any]:
    """The challenger of a slot in GET /v1/model: its details, or why none is served."""
    if slot.challenger is not None:
        return {"served": True, **slot.challenger.details()}
    assert slot.challenger_source is not None
    return {"served": False, "uri": slot.challenger_source.uri, "reason": slot.challenger_error}
