"""The similarity service: embed, compare and search digit images with an ONNX Siamese encoder.

Every route turns its images into one batch item (a stack of 1, 2 or up to 64 images), so
embed, compare, search and gallery additions share the dynamic batcher; `predict` concatenates
the stacks, runs the encoder once and splits the rows back. The graph outputs unit vectors, so
cosine similarity is a dot product. Gallery search and additions run in postprocess, on the
event loop, one at a time: the FAISS index needs no lock.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.similarity.gallery import Gallery, GalleryEmptyError, GalleryStore
from services.similarity.schemas import (
    CompareBody,
    CompareResponse,
    EmbedBody,
    EmbedResponse,
    GalleryAddBody,
    GalleryAddResponse,
    GalleryInfo,
    SearchBody,
    SearchResponse,
)
from shared.bundle import Bundle, TensorSpec
from shared.errors import BundleError
from shared.media import ImageSpec, decode_base64, decode_image, image_to_array
from shared.onnx import OnnxModel
from shared.service import Call, Endpoint, Lane, ModelService, ModelSpec, Pool, Service
from shared.settings import ServingSettings


class SimilarityModel(ModelService):
    """Images → unit embeddings; pairs → cosine + same/different; queries → gallery matches."""

    def __init__(self, store: GalleryStore) -> None:
        self.store = store

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

    def gallery_facts(self) -> dict[str, Any]:
        return {
            "size": self.gallery.size,
            "base_size": self.gallery.base_size,
            "added": self.gallery.added,
            "index": self.gallery.kind,
            "dimension": self.gallery.dimension,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "task": "similarity",
            "threshold": self.threshold,
            "embedding_dim": self.gallery.dimension,
            "gallery": self.gallery_facts(),
            "inputs": [spec.to_dict() for spec in self.model.inputs],
            "outputs": [spec.to_dict() for spec in self.model.outputs],
            "preprocessing": self.bundle.preprocessing,
            "variants": sorted(self.bundle.variants),
        }

    # ---- preprocess: base64 images → one (n, C, H, W) stack per request ------------------
    def stack(self, encoded: list[str], fields: list[str]) -> list[np.ndarray]:
        images = [decode_base64(text, field) for text, field in zip(encoded, fields, strict=True)]
        arrays = [image_to_array(decode_image(b, self.max_pixels), self.spec) for b in images]
        return [np.stack(arrays)]

    def embed_images(self, body: EmbedBody | GalleryAddBody) -> list[np.ndarray]:
        return self.stack(body.images, [f"images[{i}]" for i in range(len(body.images))])

    def compare_images(self, body: CompareBody) -> list[np.ndarray]:
        return self.stack([body.image_a, body.image_b], ["image_a", "image_b"])

    def search_image(self, body: SearchBody) -> list[np.ndarray]:
        if self.gallery.size == 0:
            raise GalleryEmptyError(
                "the gallery is empty: add items with POST /v1/similarity/gallery first"
            )
        return self.stack([body.image], ["image"])

    def predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """One encoder run over every item's images; each item gets its own rows back."""
        embeddings = self.model.run({self.input_name: np.concatenate(items)})[0]
        bounds = np.cumsum([len(item) for item in items])[:-1]
        return np.split(embeddings, bounds)

    # ---- postprocess (event loop) ------------------------------------------------------
    def embeddings(self, outputs: list[np.ndarray], body: EmbedBody) -> dict[str, Any]:
        return {"embeddings": outputs[0].tolist()}

    def comparison(self, outputs: list[np.ndarray], body: CompareBody) -> dict[str, Any]:
        a, b = outputs[0]
        similarity = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        return {
            "similarity": similarity,
            "same": similarity >= self.threshold,
            "threshold": self.threshold,
        }

    def matches(self, outputs: list[np.ndarray], body: SearchBody) -> dict[str, Any]:
        return {"matches": self.gallery.search(outputs[0][0], body.k)}

    def added(self, outputs: list[np.ndarray], body: GalleryAddBody) -> dict[str, Any]:
        ids = body.ids or self.gallery.new_ids(len(body.images))
        self.gallery.add(outputs[0], ids, body.labels)
        return {"added": len(ids), "ids": ids, "size": self.gallery.size}

    def gallery_info(self, _: None, call: Call) -> dict[str, Any]:
        return self.gallery_facts()

    def agreement(self, mine: np.ndarray, theirs: np.ndarray) -> float:
        """Shadow traffic: the mean cosine of each image's two embeddings (meaningful when the
        challenger continues production's training, so its space is aligned; see
        docs/rollouts.md)."""
        if mine.shape != theirs.shape:
            return 0.0
        cosines = np.sum(mine * theirs, axis=1) / np.maximum(
            np.linalg.norm(mine, axis=1) * np.linalg.norm(theirs, axis=1), 1e-12
        )
        return float(np.clip(cosines, 0.0, 1.0).mean())

    def summarize(self, output: np.ndarray) -> dict[str, Any]:
        """The prediction log's output: how many embeddings, and their norms."""
        norms = np.linalg.norm(output, axis=1)
        return {"embeddings": len(output), "norms": [round(float(n), 6) for n in norms]}

    # ---- Open Inference Protocol v2 --------------------------------------------------------
    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.model.inputs, self.model.outputs

    def tensor_items(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [row[None] for row in inputs[self.input_name]]

    def tensor_outputs(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {self.model.outputs[0].name: np.concatenate(outputs)}


class SimilarityService(Service):
    """/v1/similarity: embed, compare, search and the gallery, all through one batcher."""

    name = "similarity"
    single_process = True  # the gallery API additions live in this process only
    models = (ModelSpec("similarity", SimilarityModel, "similarity", tensor=True),)
    pools = (Pool("gallery", workers=1),)
    endpoints = (
        Endpoint(
            "/v1/similarity/embed",
            Lane.BATCHED,
            "Unit-length embeddings of up to 64 images, in order.",
            body=EmbedBody,
            preprocess=SimilarityModel.embed_images,
            postprocess=SimilarityModel.embeddings,
            response=EmbedResponse,
        ),
        Endpoint(
            "/v1/similarity/compare",
            Lane.BATCHED,
            "Cosine similarity of two images and the same/different decision.",
            body=CompareBody,
            preprocess=SimilarityModel.compare_images,
            postprocess=SimilarityModel.comparison,
            response=CompareResponse,
        ),
        Endpoint(
            "/v1/similarity/search",
            Lane.BATCHED,
            "The k gallery items most similar to an image, best first.",
            body=SearchBody,
            preprocess=SimilarityModel.search_image,
            postprocess=SimilarityModel.matches,
            response=SearchResponse,
            more_errors={409: "The gallery is empty"},
            rollout=False,  # the gallery holds production's embeddings
        ),
        Endpoint(
            "/v1/similarity/gallery",
            Lane.BATCHED,
            "Add up to 64 labelled images to the in-memory gallery.",
            description=(
                "Additions live in memory. They survive a model reload only when the new bundle "
                "has the same embedding model (source version, variant and base gallery); "
                "otherwise they are dropped, because vectors from another encoder are not "
                "comparable."
            ),
            body=GalleryAddBody,
            preprocess=SimilarityModel.embed_images,
            postprocess=SimilarityModel.added,
            response=GalleryAddResponse,
            more_errors={409: "An id is already in the gallery"},
            rollout=False,
        ),
        Endpoint(
            "/v1/similarity/gallery",
            Lane.DIRECT,
            "Gallery size (bundle items + API additions) and index kind.",
            method="GET",
            call=SimilarityModel.gallery_info,
            pool="gallery",
            response=GalleryInfo,
            rollout=False,
            errors=(401, 503),
        ),
    )

    def __init__(self) -> None:
        self.store = GalleryStore()  # additions outlive a reload of the same embedding model

    def make_model(self, spec: ModelSpec) -> ModelService:
        return SimilarityModel(self.store)
