"""/v1/generate (JSON or server-sent events) and /v1/generate/schedulers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.generate.schemas import GenerateRequest, GenerateResponse
from shared.app import RuntimeDep
from shared.errors import ServingError
from shared.problem import problem_event, sse
from shared.requests import error_responses, json_body, read_json
from shared.service import LoadedModel, ModelRuntime

router = APIRouter(tags=["generate"])


@dataclass
class GenerateCall:
    """A parsed request plus what the service needs beside it (model, progress, cancel)."""

    body: GenerateRequest
    model: dict[str, str]
    progress: Callable[[dict[str, Any]], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


def response_body(output: dict[str, Any], model: LoadedModel, started: float) -> dict[str, Any]:
    timing = {**output["timing_ms"], "total": (time.perf_counter() - started) * 1000}
    return {
        **output,
        "model": model.info(),
        "timing_ms": {k: round(v, 2) for k, v in timing.items()},
    }


@router.post(
    "/v1/generate",
    response_model=GenerateResponse,
    summary="Generate images from a prompt (or a class); JSON, or server-sent events with stream.",
    openapi_extra=json_body(GenerateRequest),
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Images (or an SSE stream)"},
        **error_responses(401, 413, 415, 422, 503, 504),
    },
)
async def generate(request: Request, runtime: RuntimeDep) -> Response:
    """Check the request, then generate (JSON) or stream progress and the result (SSE)."""
    started = time.perf_counter()
    body = await read_json(request, GenerateRequest)
    model = runtime.require_model()
    call = GenerateCall(body, model.info())
    if body.stream:
        return await _stream(runtime, model, call, started)
    output, model = await runtime.infer(call)
    return JSONResponse(response_body(output, model, started))


async def _stream(
    runtime: ModelRuntime, model: LoadedModel, call: GenerateCall, started: float
) -> StreamingResponse:
    """Check and queue the request first (so 422 and 503 are real statuses), then stream."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    call.progress = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    service = model.service
    job = await loop.run_in_executor(runtime.preprocess_pool, service.preprocess, call)
    task = asyncio.create_task(model.batcher.submit(job, runtime.settings.request_timeout_s))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, never lost
    await asyncio.sleep(0)  # submit() queues (or refuses) in its first step, before any await
    if task.done() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield sse("queued", {"params": job.params, "model": model.info()})
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield sse("progress", getter.result())
                else:
                    getter.cancel()
            try:
                output = task.result()
            except ServingError as exc:
                yield sse("error", problem_event(exc))
                return
            result = service.postprocess(output, call)
            yield sse("result", response_body(result, model, started))
        finally:
            call.cancelled.set()  # the client left early: stop between steps

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


@router.get(
    "/v1/generate/schedulers",
    summary="Schedulers, defaults and bounds a generate request may use with this model.",
    responses=error_responses(401, 503),
)
async def schedulers(runtime: RuntimeDep) -> JSONResponse:
    """The schedulers, defaults and bounds of the loaded model."""
    model = runtime.require_model()
    return JSONResponse({**model.service.catalogue(), "model": model.info()})  # type: ignore[attr-defined]
