"""Open Inference Protocol v2 (KServe / Triton HTTP) for tensor models, binary extension included.

Requests are split into one item per batch row and go through the same dynamic batcher as the
task routes, so V2 clients and task clients share batches. Errors use the protocol's
`{"error": "..."}` body.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from shared.bundle import TensorSpec
from shared.errors import InvalidInputError, ServingError
from shared.requests import error_responses
from shared.service import LoadedModel, ModelRuntime

HEADER_LENGTH = "inference-header-content-length"

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {dtype.name: name for name, dtype in DATATYPES.items()}
_MAX_ELEMENTS = 64 * 1024 * 1024
#: numpy kinds of JSON `data` accepted per target kind: no strings as numbers, no silent
#: truncation of 1.5 into an INT64, no true/false as numbers
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def v2_datatype(dtype: str) -> str:
    return _BY_DTYPE.get(np.dtype(dtype).name, "BYTES")


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": v2_datatype(spec.dtype), "shape": list(spec.shape)}


class ProtocolError(Exception):
    """A V2 request the server cannot accept; rendered as {"error": ...} with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary tail of a (possibly binary-extension) request."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} does not fit the body")
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        header = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    return header, memoryview(binary)


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """A `parameters` object (absent: empty); anything but an object is the client's error."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    return params


def _decode_input(raw: dict[str, Any], binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor as an array; returns it and the next offset in the binary tail."""
    if not isinstance(raw, dict):
        raise ProtocolError("each input must be an object with name, shape, datatype, data")
    name, shape, datatype = raw.get("name"), raw.get("shape"), raw.get("datatype")
    known = isinstance(datatype, str) and datatype in DATATYPES
    if not isinstance(name, str) or not isinstance(shape, list) or not known:
        raise ProtocolError(
            f"input {name!r}: needs a name, a shape list and a datatype among {sorted(DATATYPES)}"
        )
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: shape must be non-negative integers, got {shape}")
    count = math.prod(shape)  # Python integers: no overflow on absurd shapes
    if count > _MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: {count} elements is over the limit")
    dtype = DATATYPES[datatype]
    size = _parameters(raw, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size} != {count} x {dtype.itemsize} bytes"
            )
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: the body ends before its binary data")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape).copy()
        offset += size
    else:
        array = _json_data(raw, f"input {name!r}", datatype, count).reshape(shape)
    if dtype.kind == "f" and not np.all(np.isfinite(array)):  # binary data too: bits can be NaN
        raise ProtocolError(f"input {name!r}: NaN and infinite values are not accepted")
    return array, offset


def _json_data(raw: dict[str, Any], where: str, datatype: str, count: int) -> np.ndarray:
    """An input's row-major JSON `data` as an array of its datatype with `count` values."""
    data = raw.get("data")
    if data is None:
        raise ProtocolError(f"{where} has neither data nor binary_data_size")
    dtype = DATATYPES[datatype]
    try:
        given = np.asarray(data)  # what the JSON holds, before any conversion
        if given.size and given.dtype.kind not in _JSON_KINDS[dtype.kind]:
            raise TypeError(f"{given.dtype.name} values (JSON numbers of the right kind needed)")
        with np.errstate(over="ignore"):  # 1e300 as FP32 is inf, refused below as not finite
            array = given.astype(dtype)
        if dtype.kind in "iu" and not np.array_equal(array, given):  # wrapped around
            raise OverflowError(f"values outside the range of {datatype}")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"{where}: data is not {datatype}: {exc}") from exc
    if array.size != count:
        raise ProtocolError(f"{where}: {array.size} values for shape {raw['shape']}")
    return array


def _check_spec(array: np.ndarray, spec: TensorSpec) -> None:
    if array.dtype != np.dtype(spec.dtype):
        want, got = v2_datatype(spec.dtype), v2_datatype(array.dtype.name)
        raise ProtocolError(f"input {spec.name!r} must be {want}, got {got}")
    if array.ndim != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
    ):
        raise ProtocolError(
            f"input {spec.name!r} must have shape {spec.shape} (-1 = any), got {list(array.shape)}"
        )
    if array.shape and array.shape[0] == 0:
        raise ProtocolError(f"input {spec.name!r} has an empty batch")


def _parse_inputs(
    header: dict[str, Any], binary: memoryview, specs: list[TensorSpec]
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for raw in header["inputs"]:
        array, offset = _decode_input(raw, binary, offset)
        if raw["name"] in arrays:
            raise ProtocolError(f"input {raw['name']!r} is given twice")
        arrays[raw["name"]] = array
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    expected = {spec.name: spec for spec in specs}
    if set(arrays) != set(expected):
        raise ProtocolError(f"the model takes inputs {sorted(expected)}, got {sorted(arrays)}")
    for name, array in arrays.items():
        _check_spec(array, expected[name])
    return arrays


def _render(header: dict[str, Any], model: LoadedModel, outputs: dict[str, np.ndarray]) -> Response:
    wanted = header.get("outputs")
    default_binary = bool(_parameters(header, "the request").get("binary_data_output", False))
    if wanted is None:
        selection = [(name, default_binary) for name in outputs]
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
            raise ProtocolError("'outputs' must be a list of objects with a name")
        selection = []
        for requested in wanted:
            if not isinstance(requested.get("name"), str) or requested["name"] not in outputs:
                raise ProtocolError(
                    f"unknown output {requested.get('name')!r}; the model has {sorted(outputs)}"
                )
            params = _parameters(requested, f"output {requested['name']!r}")
            selection.append((requested["name"], bool(params.get("binary_data", default_binary))))
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": []}
    if "id" in header:
        if not isinstance(header["id"], str):
            raise ProtocolError("'id' must be a string")
        body["id"] = header["id"]
    chunks: list[bytes] = []
    for name, binary in selection:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(array.dtype.name),
            "shape": list(array.shape),
        }
        if binary:
            chunks.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": array.nbytes}
        else:
            entry["data"] = array.reshape(-1)
        body["outputs"].append(entry)
    # orjson writes numpy arrays directly (float32 as float32's shortest repr): 20x faster
    # than tolist() + json.dumps for a 32x10 FP32 output (python -m scripts.bench_json)
    encoded = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(encoded, media_type="application/json")
    return Response(
        encoded + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(encoded))},
    )


def build_health_router() -> APIRouter:
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
        runtime: ModelRuntime = request.app.state.runtime
        is_ready = runtime.current is not None and not runtime.draining
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    return router


def build_router() -> APIRouter:
    """The /v2 routes but health; they answer only for the model this service has loaded."""
    router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

    def runtime_of(request: Request) -> ModelRuntime:
        return request.app.state.runtime

    def model_or_error(request: Request, name: str, version: str | None) -> LoadedModel:
        model = runtime_of(request).current
        if model is None or name != model.name:
            raise ProtocolError(
                f"model {name!r} is not served here or not ready", 404 if model is not None else 503
            )
        if version is not None and version != model.version:
            raise ProtocolError(
                f"version {version!r} of {name!r} is not loaded (version {model.version} is)", 404
            )
        return model

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "modelplane", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    async def metadata(request: Request, name: str, version: str | None) -> Response:
        try:
            model = model_or_error(request, name, version)
        except ProtocolError as exc:
            return _error(exc.message, exc.status)
        inputs, outputs = model.service.tensor_specs()
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
        try:
            model_or_error(request, name, version)
        except ProtocolError as exc:
            return _error(exc.message, exc.status)
        return JSONResponse({"name": name, "ready": True})

    async def infer(request: Request, name: str, version: str | None) -> Response:
        try:
            model = model_or_error(request, name, version)
            header, binary = _split_body(await request.body(), request.headers.get(HEADER_LENGTH))
            inputs, _ = model.service.tensor_specs()
            arrays = _parse_inputs(header, binary, inputs)
            items = model.service.tensor_items(arrays)
            timeout = runtime_of(request).settings.request_timeout_s
            results = await asyncio.gather(*(model.batcher.submit(i, timeout) for i in items))
            return _render(header, model, model.service.tensor_outputs(list(results)))
        except ProtocolError as exc:
            return _error(exc.message, exc.status)
        except InvalidInputError as exc:
            return _error(exc.detail, 400)
        except ServingError as exc:
            message = exc.detail if exc.status < 500 or exc.headers else "inference failed"
            return _error(message, exc.status, exc.headers)

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
