"""Request and response bodies of the similarity routes."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from shared.requests import RequestBody
from shared.responses import ModelRef

MAX_IMAGES = 64  # images per embed / gallery request: one request never monopolizes a batch
MAX_K = 100
_IMAGE = Field(
    ...,
    description="Base64 PNG or JPEG bytes (a data: URL prefix is allowed).",
    max_length=16 * 1024 * 1024,
)
_LABEL_CHARS = 200


class EmbedBody(RequestBody):
    images: list[str] = Field(
        ..., min_length=1, max_length=MAX_IMAGES, description="Base64 PNG/JPEG images."
    )


class CompareBody(RequestBody):
    image_a: str = _IMAGE
    image_b: str = _IMAGE


class SearchBody(RequestBody):
    image: str = _IMAGE
    k: int = Field(5, ge=1, le=MAX_K, description="How many gallery matches to return.")


class GalleryAddBody(RequestBody):
    images: list[str] = Field(..., min_length=1, max_length=MAX_IMAGES)
    labels: list[str] = Field(..., description="One label per image.")
    ids: list[str] | None = Field(
        None, description="One unique id per image; generated when omitted."
    )

    @model_validator(mode="after")
    def _same_lengths(self) -> GalleryAddBody:
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.ids is not None and len(self.ids) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.ids)} ids")
        if self.ids is not None and len(set(self.ids)) != len(self.ids):
            raise ValueError("ids must be unique")
        texts = self.labels + (self.ids or [])
        if any(not t or len(t) > _LABEL_CHARS for t in texts):
            raise ValueError(f"labels and ids must be 1 to {_LABEL_CHARS} characters")
        return self


# ---- responses -------------------------------------------------------------------------------


class EmbedResponse(BaseModel):
    model: ModelRef
    embeddings: list[list[float]] = Field(..., description="Unit-length, one per image, in order.")


class CompareResponse(BaseModel):
    model: ModelRef
    similarity: float = Field(..., description="Cosine similarity in [-1, 1].")
    same: bool = Field(..., description="similarity >= threshold.")
    threshold: float = Field(..., description="The bundle's validation-chosen threshold.")


class Match(BaseModel):
    id: str
    label: str
    score: float = Field(..., description="Cosine similarity to the query.")


class SearchResponse(BaseModel):
    model: ModelRef
    matches: list[Match] = Field(..., description="Best first; fewer than k if the gallery is.")


class GalleryAddResponse(BaseModel):
    model: ModelRef
    added: int
    ids: list[str]
    size: int = Field(..., description="Gallery size after the addition.")


class GalleryInfo(BaseModel):
    model: ModelRef
    size: int
    base_size: int = Field(..., description="Items that came with the bundle.")
    added: int = Field(..., description="Items added over the API since this gallery was built.")
    index: str
    dimension: int
