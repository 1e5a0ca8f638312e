"""ClassifyService: digit (or any image) classification with an ONNX model."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request

from services.classify.schemas import (
    ClassifyJSONRequest,
    ClassifyRequest,
    ClassifyResponse,
    ModelRef,
    Prediction,
)
from shared.app import RuntimeDep
from shared.bundle import Bundle, TensorSpec
from shared.errors import InvalidInputError, UnsupportedMediaTypeError
from shared.media import IMAGE_MEDIA_TYPES, ImageSpec, decode_base64, decode_image, image_to_array
from shared.onnx import OnnxModel
from shared.requests import error_responses, media_type, parse_json
from shared.service import ModelService
from shared.settings import ServingSettings

router = APIRouter(tags=["classify"])


class ClassifyService(ModelService[ClassifyRequest, np.ndarray, np.ndarray, dict[str, Any]]):
    """Image → top-k labels with softmax scores."""

    name = "classify"
    router = router

    def load(self, bundle: Bundle, variant: str, settings: ServingSettings) -> None:
        self.bundle = bundle
        self.variant = variant
        self.spec = ImageSpec.from_manifest(bundle.preprocessing)
        self.labels = bundle.labels
        self.max_pixels = settings.max_image_pixels
        self.model = OnnxModel.from_bundle(bundle, variant, settings.intra_op_threads())
        self.input_name = self.model.inputs[0].name

    def warmup(self) -> None:
        self.model.smoke_test(self.bundle, self.variant)

    def describe(self) -> dict[str, Any]:
        return {
            "task": "classify",
            "labels": self.labels,
            "inputs": [spec.to_dict() for spec in self.model.inputs],
            "outputs": [spec.to_dict() for spec in self.model.outputs],
            "preprocessing": self.bundle.preprocessing,
            "variants": sorted(self.bundle.variants),
        }

    def preprocess(self, request: ClassifyRequest) -> np.ndarray:
        return image_to_array(decode_image(request.image, self.max_pixels), self.spec)

    def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """Logits, one row per item."""
        return list(self.model.run({self.input_name: np.stack(items)})[0])

    def postprocess(self, output: np.ndarray, request: ClassifyRequest) -> dict[str, Any]:
        shifted = np.exp(output - output.max())
        scores = shifted / shifted.sum()
        order = np.argsort(-scores, kind="stable")[: request.top_k]  # top_k > labels: all
        return {
            "predictions": [{"label": self.labels[i], "score": float(scores[i])} for i in order]
        }

    supports_tensors = True

    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.model.inputs, self.model.outputs

    def tensor_items(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(inputs[self.input_name])

    def tensor_outputs(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {self.model.outputs[0].name: np.stack(outputs)}


_IMAGE_BODY = {"type": "string", "format": "binary"}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyJSONRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": _IMAGE_BODY},
                    "required": ["file"],
                }
            },
            "image/png": {"schema": _IMAGE_BODY},
            "image/jpeg": {"schema": _IMAGE_BODY},
        },
    }
}


async def _read_request(request: Request, top_k: int | None) -> ClassifyRequest:
    """Accept JSON (base64), multipart (`file`) or a raw PNG/JPEG body."""
    kind = media_type(request)
    if kind == "application/json":
        body = parse_json(await request.body(), ClassifyJSONRequest)
        return ClassifyRequest(decode_base64(body.image), top_k or body.top_k)
    if kind in IMAGE_MEDIA_TYPES:
        return ClassifyRequest(await request.body(), top_k or 5)
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise InvalidInputError(
                    "multipart body must carry the image in a file field named 'file'"
                )
            return ClassifyRequest(await upload.read(), top_k or 5)
    raise UnsupportedMediaTypeError(
        f"content type {kind or '(none)'!r} is not accepted; send application/json, "
        "multipart/form-data, image/png or image/jpeg"
    )


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    summary="Classify one image; returns the top-k labels with scores.",
    openapi_extra=_OPENAPI_BODY,
    responses=error_responses(400, 401, 413, 415, 422, 503, 504),
)
async def classify(
    request: Request,
    runtime: RuntimeDep,
    top_k: Annotated[
        int | None, Query(ge=1, le=1000, description="Overrides the body's top_k.")
    ] = None,
) -> ClassifyResponse:
    parsed = await _read_request(request, top_k)
    result, model = await runtime.infer(parsed)
    return ClassifyResponse(
        model=ModelRef(**model.info()),
        predictions=[Prediction(**p) for p in result["predictions"]],
    )
