"""The classify route's bodies: what crosses the wire (`*Body`, `*Query`, `*Response`) and
what the model sees whatever form the image came in (`ClassifyItem`)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from shared.requests import RequestBody
from shared.responses import ModelRef


class ClassifyBody(RequestBody):
    """JSON form of a classify request."""

    image: str = Field(
        ...,
        description="Base64 PNG or JPEG bytes (a data: URL prefix is allowed).",
        min_length=1,
        max_length=16 * 1024 * 1024,
    )
    top_k: int = Field(
        5, ge=1, le=1000, description="How many labels to return, best first (all if fewer)."
    )


class ClassifyQuery(BaseModel):
    """Query parameters of POST /v1/classify."""

    top_k: int | None = Field(None, ge=1, le=1000, description="Overrides the body's top_k.")


@dataclass(frozen=True)
class ClassifyItem:
    """One request as the model sees it, whatever form it arrived in."""

    image: bytes
    top_k: int


class Prediction(BaseModel):
    label: str
    score: float = Field(..., description="Softmax probability.")


class ClassifyResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction] = Field(..., description="Sorted by score, best first.")
