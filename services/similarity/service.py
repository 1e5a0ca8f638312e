"""SimilarityService: embed, compare and search digit images with an ONNX Siamese encoder.

Every route turns its images into one batch item (a stack of 1, 2 or up to 64 images), so
embed, compare, search and gallery additions share the dynamic batcher; `predict` concatenates
the stacks, runs the encoder once and splits the rows back. The graph outputs unit vectors, so
cosine similarity is a dot product. Gallery search and additions run in `postprocess`, on the
event loop, one at a time: the FAISS index needs no lock.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.similarity.gallery import Gallery, GalleryEmptyError, GalleryStore
from services.similarity.routes import router
from services.similarity.schemas import (
    CompareRequest,
    EmbedRequest,
    GalleryAddRequest,
    SearchRequest,
    SimilarityRequest,
)
from shared.bundle import Bundle, TensorSpec
from shared.errors import BundleError
from shared.media import ImageSpec, decode_image, image_to_array
from shared.onnx import OnnxModel
from shared.service import ModelService
from shared.settings import ServingSettings


class SimilarityService(ModelService[SimilarityRequest, np.ndarray, np.ndarray, dict[str, Any]]):
    """Images → unit embeddings; pairs → cosine + same/different; queries → gallery matches."""

    name = "similarity"
    router = router
    supports_tensors = True

    def __init__(self, store: GalleryStore | None = None) -> None:
        self.store = store or GalleryStore()

    def load(self, bundle: Bundle, variant: str, settings: ServingSettings) -> None:
        if bundle.task != "similarity":
            raise BundleError(f"bundle {bundle.name!r} is a {bundle.task} bundle, not similarity")
        self.bundle = bundle
        self.variant = variant
        self.spec = ImageSpec.from_manifest(bundle.preprocessing)
        self.max_pixels = settings.max_image_pixels
        self.model = OnnxModel.from_bundle(bundle, variant, settings.intra_op_threads())
        self.input_name = self.model.inputs[0].name
        entry = bundle.variants[variant]
        self.threshold = float(entry.get("threshold", bundle.manifest.get("threshold", 0.5)))
        self.gallery: Gallery = self.store.gallery_for(bundle, variant)

    def warmup(self) -> None:
        self.model.smoke_test(self.bundle, self.variant)

    def describe(self) -> dict[str, Any]:
        return {
            "task": "similarity",
            "threshold": self.threshold,
            "embedding_dim": self.gallery.dimension,
            "gallery": {
                "size": self.gallery.size,
                "base_size": self.gallery.base_size,
                "added": self.gallery.added,
                "index": self.gallery.kind,
                "dimension": self.gallery.dimension,
            },
            "inputs": [spec.to_dict() for spec in self.model.inputs],
            "outputs": [spec.to_dict() for spec in self.model.outputs],
            "preprocessing": self.bundle.preprocessing,
            "variants": sorted(self.bundle.variants),
        }

    def preprocess(self, request: SimilarityRequest) -> np.ndarray:
        """Decode every image of the request into one (n, C, H, W) stack."""
        if isinstance(request, SearchRequest) and self.gallery.size == 0:
            raise GalleryEmptyError(
                "the gallery is empty: add items with POST /v1/similarity/gallery first"
            )
        arrays = [
            image_to_array(decode_image(b, self.max_pixels), self.spec) for b in request.images
        ]
        return np.stack(arrays)

    def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """One encoder run over every item's images; each item gets its own rows back."""
        embeddings = self.model.run({self.input_name: np.concatenate(items)})[0]
        bounds = np.cumsum([len(item) for item in items])[:-1]
        return np.split(embeddings, bounds)

    def postprocess(self, output: np.ndarray, request: SimilarityRequest) -> dict[str, Any]:
        if isinstance(request, CompareRequest):
            a, b = output
            similarity = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
            return {
                "similarity": similarity,
                "same": similarity >= self.threshold,
                "threshold": self.threshold,
            }
        if isinstance(request, SearchRequest):
            return {"matches": self.gallery.search(output[0], request.k)}
        if isinstance(request, GalleryAddRequest):
            ids = request.ids or self.gallery.new_ids(len(request.images))
            self.gallery.add(output, ids, request.labels)
            return {"added": len(ids), "ids": ids, "size": self.gallery.size}
        assert isinstance(request, EmbedRequest)
        return {"embeddings": output.tolist()}

    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.model.inputs, self.model.outputs

    def tensor_items(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [row[None] for row in inputs[self.input_name]]

    def tensor_outputs(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {self.model.outputs[0].name: np.concatenate(outputs)}


class SimilarityFactory:
    """Makes a SimilarityService per model load, all sharing one GalleryStore.

    `create_app` builds a fresh service instance for every load; the shared store is what lets
    gallery additions outlive a reload of the same embedding model.
    """

    name = SimilarityService.name
    router = SimilarityService.router
    supports_tensors = SimilarityService.supports_tensors

    def __init__(self) -> None:
        self.store = GalleryStore()

    def __call__(self) -> SimilarityService:
        return SimilarityService(self.store)
