"""StableDiffusionGenerator: text-to-image with a diffusers StableDiffusionPipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.diffusion import DEFAULT_SCHEDULER, to_uint8
from services.generate.pipelines import Generator, Job, StepHook, generators
from services.generate.schemas import GenerateBody
from shared.errors import BundleError, InvalidParameterError


class StableDiffusionGenerator(Generator):
    """Text-to-image Stable Diffusion: prompt, negative prompt, width/height multiples of 8."""

    kind = "text-to-image"

    def __init__(self, pipeline: Any, max_pixels: int) -> None:
        super().__init__(
            pipeline, {"guidance_scale": 7.5, "scheduler": DEFAULT_SCHEDULER, "steps": 25}
        )
        self.max_pixels = max_pixels
        self.native = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)

    def resolve(self, body: GenerateBody) -> dict[str, Any]:
        if body.class_label is not None:
            raise InvalidParameterError("this is a text-to-image model: send 'prompt', not 'class'")
        if not body.prompt or not body.prompt.strip():
            raise InvalidParameterError("prompt: a non-empty text prompt is required")
        width, height = body.width or self.native, body.height or self.native
        if width % 8 or height % 8:
            raise InvalidParameterError(
                f"width and height must be multiples of 8, got {width}x{height}"
            )
        if width * height > self.max_pixels:
            raise InvalidParameterError(
                f"width x height is {width * height} pixels; the limit is {self.max_pixels} "
                "(GENERATE_MAX_PIXELS)"
            )
        return {
            **self.common(body),
            "prompt": body.prompt,
            **({"negative_prompt": body.negative_prompt} if body.negative_prompt else {}),
            "width": width,
            "height": height,
        }

    def run(self, job: Job, hook: StepHook) -> tuple[list[np.ndarray], list[bool] | None]:
        p = job.params

        def on_step_end(pipe: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
            hook(index + 1, p["steps"], None)
            return kwargs

        self.pipeline.scheduler = self.scheduler(p["scheduler"])
        output = self.pipeline(
            prompt=p["prompt"],
            negative_prompt=p.get("negative_prompt"),
            num_images_per_prompt=p["num_images"],
            num_inference_steps=p["steps"],
            guidance_scale=p["guidance_scale"],
            width=p["width"],
            height=p["height"],
            generator=generators(job.seeds),
            output_type="np",
            callback_on_step_end=on_step_end,
        )
        flags = output.nsfw_content_detected
        return [to_uint8(np.nan_to_num(x)) for x in output.images], (
            [bool(f) for f in flags] if flags is not None else None
        )

    def smoke_test(self, directory: Path, manifest: dict[str, Any]) -> None:
        """One 1-step generation at the smallest size: every component loads and runs."""
        side = 8 * int(self.pipeline.vae_scale_factor)
        job = Job(
            params={
                **self.resolve(GenerateBody(prompt="smoke test", width=side, height=side, steps=1)),
            },
            seeds=[0],
        )
        images, _ = self.run(job, lambda step, steps, preview: None)
        if images[0].shape[:2] != (side, side):
            raise BundleError(f"smoke test produced {images[0].shape}, expected {side}x{side}")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pipeline": type(self.pipeline).__name__,
            "native_size": [self.native, self.native],
            "size": {
                "rule": f"multiples of 8, width x height <= {self.max_pixels}",
                "default": [self.native, self.native],
            },
            "accepts": {"prompt": "any text", "negative_prompt": "any text"},
        }
