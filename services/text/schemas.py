"""Request and response bodies of the text routes, with every bound a client may hit."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.requests import RequestBody
from shared.responses import ModelRef

MAX_TEXTS = 64
MAX_NEW_TOKENS = 256
MAX_BEAMS = 8


def _example(**example: object) -> ConfigDict:
    """One complete request as the schema's example (docs and fuzzing start from it)."""
    return ConfigDict(json_schema_extra={"examples": [example]})


class TextClassifyBody(RequestBody):
    """Texts to label; each is checked (non-empty, valid Unicode, within the limits)."""

    model_config = _example(texts=["Dobrý den, jak se máte?", "Guten Morgen!"], top_k=3)

    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    top_k: int = Field(3, ge=1, le=1000, description="labels returned per text (<= labels)")


class LabelScore(BaseModel):
    label: str
    score: float


class TextLabel(BaseModel):
    label: str
    score: float
    top_k: list[LabelScore]


class TextClassifyResponse(BaseModel):
    results: list[TextLabel]
    model: ModelRef


class GenerateBody(RequestBody):
    """A source text and how to decode it; sampling knobs only matter with strategy=sample."""

    model_config = _example(
        text="def add(a, b):\n    return a + b",
        strategy="sample",
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        seed=7,
    )

    text: str
    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    num_beams: int = Field(4, ge=1, le=MAX_BEAMS)
    # lower bounds keep sampling finite: 1/temperature and top_p must stay float32 numbers
    temperature: float = Field(1.0, ge=0.01, le=5.0, description="0.01 is all but greedy")
    top_k: int = Field(0, ge=0, le=1000, description="0 = no top-k filter")
    top_p: float = Field(1.0, ge=0.001, le=1.0, description="nucleus mass kept")
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="sampling seed")
    stream: bool = Field(False, description="server-sent events: one per token, then the result")


class GenerateResponse(BaseModel):
    text: str
    tokens: int
    timing_ms: dict[str, float]
    seed: int | None = None
    model: ModelRef


class AttentionBody(RequestBody):
    """Which self-attention map of the classifier's encoder to draw for `text`."""

    model_config = _example(text="Bonjour tout le monde", layer=-1, head=1)

    text: str
    layer: int = Field(-1, ge=-64, le=63, description="encoder layer; negative counts from the end")
    head: int = Field(0, ge=0, le=63)


class AttentionEntropyBody(RequestBody):
    """A text whose attention entropy, per encoder layer and head, the classifier reports."""

    model_config = _example(text="Bonjour tout le monde")

    text: str


class AttentionEntropyResponse(BaseModel):
    tokens: list[str]
    entropy: list[list[float]] = Field(
        description="per layer, per head: mean entropy (nats) of the attention rows"
    )
    normalized_entropy: list[list[float]] = Field(
        description="entropy / log(tokens): 0 = each query looks at one token, 1 = evenly"
    )
    model: ModelRef
