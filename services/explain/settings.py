"""The explain service's settings: its defaults differ from a fast ONNX service's."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServingSettings


class ExplainSettings(ServingSettings):
    """The explain service's defaults: an explanation takes up to seconds, so a short queue and
    a longer wait before a queued request is shed (504); heatmaps come back at the input's
    size, so inputs are capped at 1024x1024."""

    max_queue: int = Field(16, ge=1, le=100_000, description="Explanations that may wait.")
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Deadline of a request; expired before it runs: 504."
    )
    max_image_pixels: int = Field(
        1024 * 1024, ge=1, description="Largest decoded image (width*height), checked first."
    )
