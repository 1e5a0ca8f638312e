"""Open Inference Protocol v2 routes (KServe / Triton HTTP) for a service's tensor models.

Rows of the input tensors become items of the model's dynamic batcher, so V2 clients and task
clients share batches; the routes go through the runtime like any endpoint, never to a model
directly. Errors are ServingErrors: the one handler renders them as `{"error": ...}` here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from shared.errors import ModelNotFoundError, ModelNotReadyError
from shared.requests import error_responses
from shared.runtime import ModelRuntime
from shared.slots import LoadedModel
from shared.v2codec import (
    DATATYPES,
    HEADER_LENGTH,
    parse_inputs,
    render,
    split_body,
    tensor_metadata,
)

INFER_ROUTE = "/v2/models/{name}/infer"


async def speaks_v2(request: Request) -> None:
    """Marks the request as the protocol's: its errors are rendered as {"error": ...}."""
    request.state.protocol = "v2"


def v2_health_router() -> APIRouter:
    """/v2/health/live and /v2/health/ready: probes like /livez and /readyz, so they answer
    without the API token and ready turns false while the service drains."""
    router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

    @router.get("/health/live", summary="Server live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get(
        "/health/ready",
        summary="Server ready",
        responses=error_responses(503, media_type="application/json"),
    )
    async def ready(request: Request) -> Response:
        is_ready = request.app.state.runtime.ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    return router


def tensor_model(
    runtime: ModelRuntime, name: str, version: str | None, headers: Any = None
) -> LoadedModel:
    """The loaded tensor model registered as `name`: the `version` asked for (production's or
    the challenger's), else the one the canary routing chooses for these `headers` (None:
    production)."""
    tensor = [slot for slot in runtime.slots.values() if slot.spec.tensor and slot.enabled]
    slot = next((s for s in tensor if s.current is not None and s.current.name == name), None)
    if slot is None or slot.current is None:
        if any(s.current is None for s in tensor):
            raise ModelNotReadyError(f"model {name!r} is not served here or not ready")
        raise ModelNotFoundError(f"model {name!r} is not served here")
    model, challenger = slot.current, slot.challenger
    if version is None:
        return runtime.router.choose(slot, headers) if headers is not None else model
    if version == model.version:
        return model
    if challenger is not None and version == challenger.version:
        return challenger
    raise ModelNotFoundError(
        f"version {version!r} of {name!r} is not loaded (version {model.version} is)"
    )


def v2_router() -> APIRouter:
    """The /v2 routes but health; they answer only for the tensor models this service loaded."""
    router = APIRouter(
        prefix="/v2", tags=["open inference protocol v2"], dependencies=[Depends(speaks_v2)]
    )

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "modelplane", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    async def metadata(request: Request, name: str, version: str | None) -> Response:
        model = tensor_model(request.app.state.runtime, name, version)
        inputs, outputs = model.model.tensor_specs()
        return JSONResponse(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": "onnxruntime_onnx",
                "inputs": [tensor_metadata(s) for s in inputs],
                "outputs": [tensor_metadata(s) for s in outputs],
            }
        )

    async def model_ready(request: Request, name: str, version: str | None) -> Response:
        tensor_model(request.app.state.runtime, name, version)
        return JSONResponse({"name": name, "ready": True})

    async def infer(request: Request, name: str, version: str | None) -> Response:
        runtime: ModelRuntime = request.app.state.runtime
        model = tensor_model(runtime, name, version, request.headers)
        header, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        inputs, _ = model.model.tensor_specs()
        items = model.model.tensor_items(parse_inputs(header, binary, inputs))
        request_id = getattr(request.state, "request_id", None)
        outputs = await runtime.submit(model, items, INFER_ROUTE, request_id)
        return render(header, model.name, model.version, model.model.tensor_outputs(outputs))

    for suffix, handler, method in (
        ("", metadata, "GET"),
        ("/ready", model_ready, "GET"),
        ("/infer", infer, "POST"),
    ):
        _add_pair(router, suffix, handler, method)
    return router


_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        "datatype": {"type": "string", "enum": sorted(DATATYPES)},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}
#: the inference request body (JSON; with the binary extension the JSON header is followed by
#: raw tensor bytes and Inference-Header-Content-Length gives its length)
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                        "parameters": {"type": "object"},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _add_pair(router: APIRouter, suffix: str, handler: Any, method: str) -> None:
    """Register `/models/{name}{suffix}` and `/models/{name}/versions/{version}{suffix}`."""

    async def unversioned(request: Request, name: str) -> Response:
        return await handler(request, name, None)

    async def versioned(request: Request, name: str, version: str) -> Response:
        return await handler(request, name, version)

    label = {"": "Model metadata", "/ready": "Model ready", "/infer": "Inference"}[suffix]
    codes = (400, 404, 413, 415, 422, 503, 504) if suffix == "/infer" else (404, 503)
    # the protocol's own errors are {"error": ...} JSON; a missing token is problem+json
    responses = error_responses(*codes, media_type="application/json") | error_responses(401)
    extra = _INFER_BODY if suffix == "/infer" else None
    router.add_api_route(
        f"/models/{{name}}{suffix}",
        unversioned,
        methods=[method],
        summary=label,
        responses=responses,
        openapi_extra=extra,
    )
    router.add_api_route(
        f"/models/{{name}}/versions/{{version}}{suffix}",
        versioned,
        methods=[method],
        summary=f"{label} (a version)",
        responses=responses,
        openapi_extra=extra,
    )
