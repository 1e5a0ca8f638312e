"""GenerateBody / GenerateResponse and the bounds every request is checked against."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.requests import RequestBody
from shared.responses import ModelRef

MAX_IMAGES = 4
DEFAULT_STEPS = 25
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_SIDE = 1024
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 1000


class GenerateBody(RequestBody):
    """One generation: a prompt (or a class for the digit model) and sampling parameters."""

    model_config = ConfigDict(populate_by_name=True)

    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description='Text prompt; for the digit model one digit ("a handwritten 7", "seven", "7").',
    )
    negative_prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="What to steer away from (digit model: one digit, used instead of the null "
        "class in guidance).",
    )
    class_label: int | None = Field(
        None, alias="class", ge=0, description="Digit model only: the class to generate."
    )
    num_images: int = Field(1, ge=1, le=MAX_IMAGES, description="Images to generate.")
    steps: int = Field(DEFAULT_STEPS, ge=1, le=MAX_STEPS, description="Denoising steps.")
    guidance_scale: float | None = Field(
        None,
        ge=0.0,
        le=MAX_GUIDANCE,
        description="Classifier-free guidance; 1 = conditional only, 0 = unconditional. "
        "Default: the model's.",
    )
    scheduler: str | None = Field(
        None, max_length=40, description="Sampler; GET /v1/generate/schedulers lists them."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Image i uses seed + i; same seed and parameters give identical bytes. "
        "Default: a random seed, returned in the response.",
    )
    width: int | None = Field(None, ge=8, le=MAX_SIDE, description="Pixels; default the model's.")
    height: int | None = Field(None, ge=8, le=MAX_SIDE, description="Pixels; default the model's.")
    format: Literal["png", "jpeg"] = Field("png", description="Encoding of the images.")
    stream: bool = Field(
        False, description="Answer with server-sent events: progress per step, then the result."
    )
    preview_every: int = Field(
        0,
        ge=0,
        le=MAX_STEPS,
        description="With stream: a low-resolution preview PNG every N steps (0 = none).",
    )


class GeneratedImage(BaseModel):
    """One generated image and the seed that reproduces it."""

    image: str = Field(..., description="Base64 PNG or JPEG bytes.")
    seed: int
    flagged: bool = Field(False, description="The safety checker flagged it (then it is black).")


class Safety(BaseModel):
    """Whether a safety checker looked at the images, and which."""

    checker: str | None = Field(..., description="Which safety checker ran, if any.")
    ran: bool


class GenerateResponse(BaseModel):
    """The JSON answer of POST /v1/generate (also the `result` event of a stream)."""

    model: ModelRef
    images: list[GeneratedImage]
    params: dict[str, object] = Field(..., description="The parameters actually used.")
    safety: Safety
    timing_ms: dict[str, float] = Field(..., description="queue, generate, encode, total.")
