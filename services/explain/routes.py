"""The explain routes: JSON in (415 otherwise), bounds checked (422), work through the runtime."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.explain.jobs import FiltersJob
from services.explain.schemas import (
    ActivationsJSONRequest,
    ActivationsResponse,
    CompareJSONRequest,
    CompareResponse,
    ExplainJSONRequest,
    ExplainResponse,
    FiltersResponse,
    ModelRef,
)
from shared.app import RuntimeDep
from shared.requests import error_responses, json_body, read_json
from shared.service import LoadedModel, ModelRuntime

router = APIRouter(tags=["explain"])

_ERRORS = error_responses(400, 401, 413, 415, 422, 503, 504)


def _ref(model: LoadedModel) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, variant="torch")


async def _answer(
    request: Request, runtime: ModelRuntime, body: type[Any], response: type[Any]
) -> Any:
    """Parse the JSON body as `body`, run it through the runtime, answer with `response`."""
    parsed = await read_json(request, body, hint=" with the image as base64")
    result, model = await runtime.infer(parsed)
    return response(model=_ref(model), **result)


@router.post(
    "/v1/explain",
    response_model=ExplainResponse,
    summary="Explain one prediction with one attribution method; a heatmap over the input.",
    openapi_extra=json_body(ExplainJSONRequest),
    responses=_ERRORS,
)
async def explain(request: Request, runtime: RuntimeDep) -> ExplainResponse:
    return await _answer(request, runtime, ExplainJSONRequest, ExplainResponse)


@router.post(
    "/v1/explain/compare",
    response_model=CompareResponse,
    summary="Several methods on one image: a side-by-side panel and each one's fidelity.",
    openapi_extra=json_body(CompareJSONRequest),
    responses=_ERRORS,
)
async def compare(request: Request, runtime: RuntimeDep) -> CompareResponse:
    return await _answer(request, runtime, CompareJSONRequest, CompareResponse)


@router.post(
    "/v1/explain/activations",
    response_model=ActivationsResponse,
    summary="The top-N channels (by mean activation) of a named layer as a PNG grid.",
    openapi_extra=json_body(ActivationsJSONRequest),
    responses=_ERRORS,
)
async def activations(request: Request, runtime: RuntimeDep) -> ActivationsResponse:
    return await _answer(request, runtime, ActivationsJSONRequest, ActivationsResponse)


@router.get(
    "/v1/explain/filters",
    response_model=FiltersResponse,
    summary="The first conv layer's filters as a PNG grid.",
    responses=error_responses(401, 503),
)
async def filters(runtime: RuntimeDep) -> FiltersResponse:
    result, model = await runtime.infer(FiltersJob())
    return FiltersResponse(model=_ref(model), **result)
