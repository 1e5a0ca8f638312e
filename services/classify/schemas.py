"""ClassifyRequest / ClassifyResponse."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from shared.requests import RequestBody
from shared.responses import ModelRef


class ClassifyJSONRequest(RequestBody):
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


@dataclass(frozen=True)
class ClassifyRequest:
    """One request as the service sees it, whatever form it arrived in."""

    image: bytes
    top_k: int


class Prediction(BaseModel):
    label: str
    score: float = Field(..., description="Softmax probability.")


class ClassifyResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction] = Field(..., description="Sorted by score, best first.")
