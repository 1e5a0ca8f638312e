"""Request and response bodies of the text routes, with every bound a client may hit."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXTS = 64
MAX_NEW_TOKENS = 256
MAX_BEAMS = 8


class ModelRef(BaseModel):
    name: str
    version: str
    variant: str


class ClassifyRequest(BaseModel):
    """Texts to label; each is checked (non-empty, valid Unicode, within the limits)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    top_k: int = Field(3, ge=1, le=1000, description="labels returned per text (<= labels)")


class LabelScore(BaseModel):
    label: str
    score: float


class TextLabel(BaseModel):
    label: str
    score: float
    top_k: list[LabelScore]


class ClassifyResponse(BaseModel):
    results: list[TextLabel]
    model: ModelRef


class GenerateRequest(BaseModel):
    """A source text and how to decode it; sampling knobs only matter with strategy=sample."""

    model_config = ConfigDict(extra="forbid")

    text: str
    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    num_beams: int = Field(4, ge=1, le=MAX_BEAMS)
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    top_k: int = Field(0, ge=0, le=1000, description="0 = no top-k filter")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="sampling seed")
    stream: bool = Field(False, description="server-sent events: one per token, then the result")


class GenerateResponse(BaseModel):
    text: str
    tokens: int
    timing_ms: dict[str, float]
    seed: int | None = None
    model: ModelRef


class AttentionRequest(BaseModel):
    """Which self-attention map of the classifier's encoder to draw for `text`."""

    model_config = ConfigDict(extra="forbid")

    text: str
    layer: int = Field(-1, ge=-64, le=63, description="encoder layer; negative counts from the end")
    head: int = Field(0, ge=0, le=63)
