"""The task routes, built from a service's endpoint declarations.

One handler shape for every endpoint: read the body (415/422 from the declaration), take the
model, run the lane, add `model` to the answer. Documentation (body, answer, errors) comes
from the same declaration, so the OpenAPI document cannot drift from what the route does.
"""

from __future__ import annotations

import inspect
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from shared.lanes import open_stream
from shared.requests import error_responses, json_body, read_json
from shared.runtime import ModelRuntime
from shared.service import Call, Endpoint, Lane, Service, bound, shadowed
from shared.slots import LoadedModel

SSE_HEADERS = {"cache-control": "no-cache"}
_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD


def build_router(service: Service, runtime: ModelRuntime) -> APIRouter:
    """Every declared endpoint of `service` as a route on one router."""
    router = APIRouter(tags=[service.name])
    for endpoint in service.endpoints:
        router.add_api_route(
            endpoint.path,
            _handler(endpoint, runtime),
            methods=[endpoint.method],
            summary=endpoint.summary,
            description=endpoint.description,
            response_model=endpoint.response,
            response_class=(
                OrjsonResponse if endpoint.media_type == "application/json" else Response
            ),
            responses=_responses(endpoint),
            openapi_extra=_openapi_body(endpoint),
        )
    return router


def _responses(endpoint: Endpoint) -> dict[int | str, dict[str, Any]]:
    responses = error_responses(*endpoint.errors)
    for code, description in endpoint.more_errors.items():
        responses[code] = {"description": description}
    if endpoint.lane is Lane.STREAMING:
        responses[200] = {"content": {"text/event-stream": {}}}
    elif endpoint.media_type != "application/json":
        responses[200] = {"content": {endpoint.media_type: {}}}
    return responses


def _openapi_body(endpoint: Endpoint) -> dict[str, Any] | None:
    if endpoint.openapi_body is not None:
        return endpoint.openapi_body
    return json_body(endpoint.body) if endpoint.body is not None else None


class OrjsonResponse(JSONResponse):
    """JSON written by orjson (numpy scalars and arrays as they are): a few times faster than
    json.dumps on an answer's event-loop time. A non-finite float is written as null."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _handler(endpoint: Endpoint, runtime: ModelRuntime) -> Any:
    """The route function; with a declared query model its fields are query parameters."""

    async def handle(request: Request, query: BaseModel | None = None) -> Response:
        return await serve(endpoint, runtime, request, query)

    parameters = [inspect.Parameter("request", _POSITIONAL, annotation=Request)]
    if endpoint.query is not None:  # FastAPI reads the route's parameters from its signature
        annotation = Annotated[endpoint.query, Query()]
        parameters.append(inspect.Parameter("query", _POSITIONAL, annotation=annotation))
    handle.__signature__ = inspect.Signature(parameters, return_annotation=Response)  # type: ignore[attr-defined]
    return handle


async def read(endpoint: Endpoint, request: Request, query: BaseModel | None) -> Any:
    """What the endpoint's preprocess receives: its reader's result, the parsed JSON body, the
    query model, or None (a GET without either)."""
    if endpoint.reader is not None:
        return await endpoint.reader(request, query)
    if endpoint.body is not None:
        return await read_json(request, endpoint.body)
    return query


async def serve(
    endpoint: Endpoint, runtime: ModelRuntime, request: Request, query: BaseModel | None
) -> Response:
    parsed = await read(endpoint, request, query)
    if endpoint.rollout:  # production, or the challenger (canary, x-model-alias)
        loaded = runtime.choose(endpoint.model, request.headers)
    else:
        loaded = runtime.require(endpoint.model)
    request.state.model_version = loaded.version  # the access log names who answered
    if endpoint.lane is Lane.BATCHED:  # the batcher keeps each item's deadline itself
        items = await runtime.preprocess(endpoint, loaded, parsed, batched=True)
        request_id = getattr(request.state, "request_id", None)
        outputs = await runtime.submit(
            loaded, items, endpoint.path, request_id, shadow=shadowed(endpoint)
        )
        return _answer(endpoint, runtime, loaded, outputs, parsed)
    timeout = runtime.settings.request_timeout_s
    request_id = getattr(request.state, "request_id", None)
    call = Call(endpoint.path, loaded.info(), timeout, time.monotonic() + timeout, request_id)
    work = await runtime.preprocess(endpoint, loaded, parsed, batched=False)
    pool = runtime.pool(endpoint.pool)
    assert endpoint.call is not None  # Service.check refused the declaration otherwise
    run = bound(loaded.model, endpoint.call)
    if endpoint.lane is Lane.STREAMING and getattr(parsed, "stream", False):
        first = None
        if endpoint.first_event is not None:
            opening = bound(loaded.model, endpoint.first_event)(work)
            first = {**opening, "model": loaded.info()}

        def finish(output: Any) -> dict[str, Any]:
            runtime.called(endpoint, loaded, work, output, call)
            return _fields(endpoint, runtime, loaded, output, parsed)

        events = await open_stream(pool, lambda c: run(work, c), call, first, finish)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        output = await pool.run(lambda: run(work, call), call)
    except Exception:
        runtime.record(loaded, loaded.role, 0.0, ok=False)
        raise
    runtime.called(endpoint, loaded, work, output, call)
    return _answer(endpoint, runtime, loaded, output, parsed)


def _fields(
    endpoint: Endpoint, runtime: ModelRuntime, loaded: LoadedModel, output: Any, parsed: Any
) -> Any:
    """The postprocessed answer with the `model` that produced it (JSON endpoints)."""
    if endpoint.postprocess is not None:
        started = time.perf_counter()
        output = bound(loaded.model, endpoint.postprocess)(output, parsed)
        runtime.stage(endpoint.path, "postprocess", time.perf_counter() - started)
    if endpoint.media_type != "application/json":
        return output
    return {**output, "model": loaded.info()}


def _answer(
    endpoint: Endpoint, runtime: ModelRuntime, loaded: LoadedModel, output: Any, parsed: Any
) -> Response:
    body = _fields(endpoint, runtime, loaded, output, parsed)
    if endpoint.media_type != "application/json":
        return Response(body, media_type=endpoint.media_type)
    return OrjsonResponse(body)
