"""/v1/text/classify (batched), /v1/text/generate (JSON or SSE), /v1/text/attention (PNG)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.text.schemas import (
    AttentionRequest,
    ClassifyRequest,
    ClassifyResponse,
    GenerateRequest,
    GenerateResponse,
)
from shared.app import RuntimeDep
from shared.errors import InvalidInputError, ServingError, UnsupportedMediaTypeError
from shared.problem import problem_event, sse
from shared.requests import error_responses, json_body, media_type, parse_json

router = APIRouter(tags=["text"])
_ERRORS = error_responses(400, 401, 413, 415, 422, 503, 504)


def _surrogates(value: Any, path: str) -> str | None:
    """The path of the first string holding a lone surrogate (JSON allows `\\ud800`)."""
    if isinstance(value, str):
        return path if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = _surrogates(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found:
            return found
    return None


async def read_body(request: Request, model: type[Any]) -> Any:
    """JSON body as `model`; a lone surrogate is named as a 400 instead of a parse error."""
    kind = media_type(request)
    if kind != "application/json":
        raise UnsupportedMediaTypeError(
            f"content type {kind or '(none)'!r} is not accepted; send application/json"
        )
    raw = await request.body()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None  # parse_json below reports the JSON error as a 422
    where = _surrogates(parsed, "body") if parsed is not None else None
    if where:
        raise InvalidInputError(
            f"{where.removeprefix('body.')} is not valid Unicode: it holds a lone surrogate "
            "(an unpaired \\ud800-\\udfff escape)"
        )
    return parse_json(raw, model)


@router.post(
    "/v1/text/classify",
    response_model=ClassifyResponse,
    summary="Identify the language of each text; top-k labels with scores.",
    openapi_extra=json_body(ClassifyRequest),
    responses=_ERRORS,
)
async def classify(request: Request, runtime: RuntimeDep) -> JSONResponse:
    from services.text.service import ClassifyItem

    body: ClassifyRequest = await read_body(request, ClassifyRequest)
    runtime.require_model()
    done = await asyncio.gather(
        *(runtime.infer(ClassifyItem(t, i, body.top_k)) for i, t in enumerate(body.texts))
    )
    return JSONResponse({"results": [r for r, _ in done], "model": done[0][1].info()})


def generated_body(output: dict[str, Any], info: dict[str, str], started: float) -> dict:
    """The generate response: text, token count, timings (ms, with the total), the model."""
    timing = {**output["timing_ms"], "total": (time.perf_counter() - started) * 1000}
    return {**output, "timing_ms": {k: round(v, 2) for k, v in timing.items()}, "model": info}


@router.post(
    "/v1/text/generate",
    response_model=GenerateResponse,
    summary="Summarize a Python function; JSON, or server-sent events with stream=true.",
    openapi_extra=json_body(GenerateRequest),
    responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
)
async def generate(request: Request, runtime: RuntimeDep) -> Response:
    started = time.perf_counter()
    body: GenerateRequest = await read_body(request, GenerateRequest)
    model = runtime.require_model()
    generation = model.service.require_generation()  # type: ignore[attr-defined]
    generation.prepare(body)  # 4xx before anything queues
    generation.admit()
    loop = asyncio.get_running_loop()
    deadline = time.time() + runtime.settings.request_timeout_s
    events: asyncio.Queue[str] = asyncio.Queue()

    def on_text(piece: str) -> None:
        loop.call_soon_threadsafe(events.put_nowait, piece)

    future = loop.run_in_executor(
        generation.pool, generation.run, body, deadline, on_text if body.stream else None
    )
    future.add_done_callback(lambda _: generation.release())
    if not body.stream:
        return JSONResponse(generated_body(await future, generation.info, started))
    return StreamingResponse(
        _stream(future, events, generation.info, started),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _stream(
    future: asyncio.Future[dict[str, Any]],
    events: asyncio.Queue[str],
    info: dict[str, str],
    started: float,
) -> AsyncIterator[bytes]:
    """A `token` event per new piece of text, then `result` (or `error`)."""
    index = 0
    while not future.done() or not events.empty():
        getter = asyncio.ensure_future(events.get())
        await asyncio.wait({future, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield sse("token", {"index": index, "text": getter.result()})
            index += 1
        else:
            getter.cancel()
    try:
        output = future.result()
    except ServingError as exc:
        yield sse("error", problem_event(exc))
        return
    yield sse("result", generated_body(output, info, started))


@router.post(
    "/v1/text/attention",
    summary="The classifier's self-attention of one layer/head over a text's tokens, as PNG.",
    openapi_extra=json_body(AttentionRequest),
    responses={200: {"content": {"image/png": {}}}, **_ERRORS},
    response_class=Response,
)
async def attention(request: Request, runtime: RuntimeDep) -> Response:
    body: AttentionRequest = await read_body(request, AttentionRequest)
    model = runtime.require_model()
    loop = asyncio.get_running_loop()
    png = await loop.run_in_executor(runtime.preprocess_pool, model.service.attention, body)  # type: ignore[attr-defined]
    return Response(png, media_type="image/png")
