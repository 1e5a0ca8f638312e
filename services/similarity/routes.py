"""The /v1/similarity routes: JSON bodies with base64 images (anything else is a 415)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.similarity.schemas import (
    CompareBody,
    CompareRequest,
    CompareResponse,
    EmbedBody,
    EmbedRequest,
    EmbedResponse,
    GalleryAddBody,
    GalleryAddRequest,
    GalleryAddResponse,
    GalleryInfo,
    ModelRef,
    SearchBody,
    SearchRequest,
    SearchResponse,
)
from shared.app import RuntimeDep
from shared.media import decode_base64
from shared.requests import error_responses, json_body, read_json

router = APIRouter(tags=["similarity"])

_ERRORS = error_responses(400, 401, 413, 415, 422, 503, 504)


def _images(encoded: list[str], field: str) -> list[bytes]:
    return [decode_base64(text, f"{field}[{i}]") for i, text in enumerate(encoded)]


@router.post(
    "/v1/similarity/embed",
    response_model=EmbedResponse,
    summary="Unit-length embeddings of up to 64 images, in order.",
    openapi_extra=json_body(EmbedBody),
    responses=_ERRORS,
)
async def embed(request: Request, runtime: RuntimeDep) -> EmbedResponse:
    body = await read_json(request, EmbedBody)
    result, model = await runtime.infer(EmbedRequest(_images(body.images, "images")))
    return EmbedResponse(model=ModelRef(**model.info()), **result)


@router.post(
    "/v1/similarity/compare",
    response_model=CompareResponse,
    summary="Cosine similarity of two images and the same/different decision.",
    openapi_extra=json_body(CompareBody),
    responses=_ERRORS,
)
async def compare(request: Request, runtime: RuntimeDep) -> CompareResponse:
    body = await read_json(request, CompareBody)
    pair = [decode_base64(body.image_a, "image_a"), decode_base64(body.image_b, "image_b")]
    result, model = await runtime.infer(CompareRequest(pair))
    return CompareResponse(model=ModelRef(**model.info()), **result)


@router.post(
    "/v1/similarity/search",
    response_model=SearchResponse,
    summary="The k gallery items most similar to an image, best first.",
    openapi_extra=json_body(SearchBody),
    responses={**_ERRORS, 409: {"description": "The gallery is empty"}},
)
async def search(request: Request, runtime: RuntimeDep) -> SearchResponse:
    body = await read_json(request, SearchBody)
    query = SearchRequest([decode_base64(body.image, "image")], body.k)
    result, model = await runtime.infer(query)
    return SearchResponse(model=ModelRef(**model.info()), **result)


@router.post(
    "/v1/similarity/gallery",
    response_model=GalleryAddResponse,
    summary="Add up to 64 labelled images to the in-memory gallery.",
    description=(
        "Additions live in memory. They survive a model reload only when the new bundle has "
        "the same embedding model (source version, variant and base gallery); otherwise they "
        "are dropped, because vectors from another encoder are not comparable."
    ),
    openapi_extra=json_body(GalleryAddBody),
    responses={**_ERRORS, 409: {"description": "An id is already in the gallery"}},
)
async def add_to_gallery(request: Request, runtime: RuntimeDep) -> GalleryAddResponse:
    body = await read_json(request, GalleryAddBody)
    items = GalleryAddRequest(_images(body.images, "images"), body.labels, body.ids)
    result, model = await runtime.infer(items)
    return GalleryAddResponse(model=ModelRef(**model.info()), **result)


@router.get(
    "/v1/similarity/gallery",
    response_model=GalleryInfo,
    summary="Gallery size (bundle items + API additions) and index kind.",
)
async def gallery_info(runtime: RuntimeDep) -> GalleryInfo:
    model = runtime.require_model()
    return GalleryInfo(model=ModelRef(**model.info()), **model.service.describe()["gallery"])
