"""The gallery: reference embeddings with ids and labels, searched through a FAISS index.

The bundle carries the embeddings (`.npy`, no pickle) and `gallery.json` (ids, labels); the
index is rebuilt here at load. A flat inner-product index is exact (embeddings are unit
vectors, so inner product = cosine); HNSW trades a little recall for sub-linear search on
large galleries.

Additions over the API live in memory. They are kept across a model reload only when the new
bundle embeds exactly as the old one did: same source model version, same variant, same base
gallery (`GalleryKey`). A different encoder means a different embedding space, where old
vectors are meaningless, so the additions are dropped (and the drop is logged).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

import numpy as np

from shared.bundle import Bundle
from shared.errors import BundleError, ServingError

log = logging.getLogger("modelplane.similarity.gallery")


class GalleryEmptyError(ServingError):
    """Search needs at least one gallery item."""

    status, code, title = 409, "gallery_empty", "Conflict"


class DuplicateIdError(ServingError):
    """An added id is already in the gallery."""

    status, code, title = 409, "duplicate_id", "Conflict"


@dataclass(frozen=True)
class GalleryKey:
    """What must stay the same for added items to remain valid after a reload."""

    source_model: str
    source_version: str
    variant: str
    base_sha256: str

    @classmethod
    def of(cls, bundle: Bundle, variant: str) -> GalleryKey:
        source = bundle.manifest.get("source", {})
        embeddings = bundle.variants[variant]["gallery_embeddings"]
        return cls(
            str(source.get("model", "")),
            str(source.get("version", "")),
            variant,
            bundle.manifest["files"][embeddings]["sha256"],
        )


class Gallery:
    """Embeddings, ids, labels and the FAISS index over them."""

    def __init__(
        self, embeddings: np.ndarray, ids: list[str], labels: list[str], index: str, hnsw_m: int
    ) -> None:
        import faiss

        if embeddings.ndim != 2 or len(embeddings) != len(ids) or len(ids) != len(labels):
            raise BundleError(
                f"gallery mismatch: embeddings {embeddings.shape}, {len(ids)} ids, "
                f"{len(labels)} labels"
            )
        faiss.omp_set_num_threads(1)  # one query at a time; the batcher owns the cores
        self.dimension = int(embeddings.shape[1])
        self.kind = index
        if index == "hnsw":
            self.index = faiss.IndexHNSWFlat(self.dimension, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        elif index == "flat":
            self.index = faiss.IndexFlatIP(self.dimension)
        else:
            raise BundleError(f"unknown gallery index {index!r}; expected flat or hnsw")
        self.ids: list[str] = []
        self.labels: list[str] = []
        self._known: set[str] = set()
        self.base_size = 0
        self.add(embeddings, ids, labels)
        self.base_size = len(ids)

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str) -> Gallery:
        meta = bundle.manifest.get("gallery")
        entry = bundle.variants[variant]
        if not meta or "gallery_embeddings" not in entry:
            raise BundleError(f"bundle {bundle.name!r} has no gallery for variant {variant!r}")
        items = json.loads(bundle.file(meta["items"]).read_text())
        embeddings = bundle.load_array(entry["gallery_embeddings"]).astype(np.float32)
        return cls(
            embeddings, items["ids"], items["labels"], meta["index"], int(meta.get("hnsw_m", 32))
        )

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def added(self) -> int:
        return self.size - self.base_size

    def new_ids(self, count: int) -> list[str]:
        """`added-<n>` ids that are not taken yet."""
        ids, n = [], self.size
        while len(ids) < count:
            candidate = f"added-{n}"
            if candidate not in self._known:
                ids.append(candidate)
            n += 1
        return ids

    def add(self, embeddings: np.ndarray, ids: list[str], labels: list[str]) -> None:
        """Append items; an id already present is a 409 and nothing is added."""
        taken = sorted(self._known.intersection(ids))
        if taken:
            raise DuplicateIdError(f"ids already in the gallery: {taken[:10]}")
        if len(embeddings):
            self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.ids += ids
        self.labels += labels
        self._known.update(ids)

    def search(self, query: np.ndarray, k: int) -> list[dict[str, object]]:
        """The best `k` items for one query vector (fewer when the gallery is smaller)."""
        if self.size == 0:
            raise GalleryEmptyError(
                "the gallery is empty: add items with POST /v1/similarity/gallery first"
            )
        scores, rows = self.index.search(query.reshape(1, -1).astype(np.float32), min(k, self.size))
        return [
            {"id": self.ids[r], "label": self.labels[r], "score": float(s)}
            for s, r in zip(scores[0], rows[0], strict=True)
            if r >= 0
        ]


class GalleryStore:
    """Hands the same Gallery (with its additions) to every model load with the same key.

    A rollout serves two embedding models at once (production and the challenger), so the
    store keeps one gallery per key, the `KEEP` most recently handed out: a challenger load
    never takes production's additions away, and additions outlive a reload of the same
    embedding model; vectors of another encoder are never mixed in."""

    KEEP = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._galleries: dict[GalleryKey, Gallery] = {}

    def gallery_for(self, bundle: Bundle, variant: str) -> Gallery:
        key = GalleryKey.of(bundle, variant)
        with self._lock:
            gallery = self._galleries.pop(key, None)
            if gallery is not None:
                log.info("keeping the gallery and its %d added items", gallery.added)
            else:
                gallery = Gallery.from_bundle(bundle, variant)
            self._galleries[key] = gallery  # most recent last
            while len(self._galleries) > self.KEEP:
                old_key = next(iter(self._galleries))
                old = self._galleries.pop(old_key)
                if old.added:
                    log.warning("dropping %d added gallery items of %s", old.added, old_key)
            return gallery
            if self._gallery is not None and self._gallery.added:
                log.warning(
                    "new embedding model %s: dropping %d added gallery items (old model %s)",
                    key,
                    self._gallery.added,
                    self._key,
                )
            self._key, self._gallery = key, Gallery.from_bundle(bundle, variant)
            return self._gallery
