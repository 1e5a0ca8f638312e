"""The classify service: digit (or any image) classification with an ONNX model."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Request

from services.classify.schemas import ClassifyBody, ClassifyItem, ClassifyQuery, ClassifyResponse
from shared.bundle import Bundle, TensorSpec
from shared.errors import InvalidInputError, UnsupportedMediaTypeError
from shared.media import IMAGE_MEDIA_TYPES, ImageSpec, decode_base64, decode_image, image_to_array
from shared.onnx import OnnxModel
from shared.requests import media_type, parse_json
from shared.service import Endpoint, Lane, ModelService, ModelSpec, Service, top1_agreement
from shared.settings import ServingSettings


class ClassifyModel(ModelService):
    """Image → top-k labels with softmax scores."""

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

    def preprocess(self, item: ClassifyItem) -> list[np.ndarray]:
        return [image_to_array(decode_image(item.image, self.max_pixels), self.spec)]

    def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """Logits, one row per item."""
        return list(self.model.run({self.input_name: np.stack(items)})[0])

    def postprocess(self, outputs: list[np.ndarray], item: ClassifyItem) -> dict[str, Any]:
        (logits,) = outputs
        shifted = np.exp(logits - logits.max())
        scores = shifted / shifted.sum()
        order = np.argsort(-scores, kind="stable")[: item.top_k]  # top_k > labels: all
        return {
            "predictions": [{"label": self.labels[i], "score": float(scores[i])} for i in order]
        }

    def agreement(self, mine: np.ndarray, theirs: np.ndarray) -> float:
        """Shadow traffic: 1 when both versions rank the same class first."""
        return top1_agreement(mine, theirs)

    def summarize(self, output: np.ndarray) -> dict[str, Any]:
        """The prediction log's output: top-1 label and its softmax score."""
        shifted = np.exp(output - output.max())
        best = int(shifted.argmax())
        return {"label": self.labels[best], "score": round(float(1.0 / shifted.sum()), 6)}

    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.model.inputs, self.model.outputs

    def tensor_items(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(inputs[self.input_name])

    def tensor_outputs(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {self.model.outputs[0].name: np.stack(outputs)}


async def read_image(request: Request, query: ClassifyQuery) -> ClassifyItem:
    """Accept JSON (base64), multipart (`file`) or a raw PNG/JPEG body."""
    kind = media_type(request)
    if kind == "application/json":
        body = parse_json(await request.body(), ClassifyBody)
        return ClassifyItem(decode_base64(body.image), query.top_k or body.top_k)
    if kind in IMAGE_MEDIA_TYPES:
        return ClassifyItem(await request.body(), query.top_k or 5)
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise InvalidInputError(
                    "multipart body must carry the image in a file field named 'file'"
                )
            return ClassifyItem(await upload.read(), query.top_k or 5)
    raise UnsupportedMediaTypeError(
        f"content type {kind or '(none)'!r} is not accepted; send application/json, "
        "multipart/form-data, image/png or image/jpeg"
    )


_IMAGE_BODY = {"type": "string", "format": "binary"}
_MULTIPART = {"type": "object", "properties": {"file": _IMAGE_BODY}, "required": ["file"]}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyBody.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART},
            "image/png": {"schema": _IMAGE_BODY},
            "image/jpeg": {"schema": _IMAGE_BODY},
        },
    }
}


class ClassifyService(Service):
    """POST /v1/classify (JSON, multipart or raw image), batched; V2 tensors too."""

    name = "classify"
    models = (ModelSpec("classify", ClassifyModel, "classify", tensor=True),)
    endpoints = (
        Endpoint(
            "/v1/classify",
            Lane.BATCHED,
            "Classify one image; returns the top-k labels with scores.",
            query=ClassifyQuery,
            reader=read_image,
            openapi_body=_OPENAPI_BODY,
            preprocess=ClassifyModel.preprocess,
            postprocess=ClassifyModel.postprocess,
            response=ClassifyResponse,
        ),
    )
