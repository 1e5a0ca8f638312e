"""The two kinds of pipeline the generate service serves, behind one small interface.

`DigitsGenerator` wraps the project's class-conditional `DigitsDiffusionPipeline`;
`stable_diffusion.StableDiffusionGenerator` wraps a diffusers `StableDiffusionPipeline`
(text-to-image). Both load from a local directory with `use_safetensors=True` (never a
pickle), and both swap the request's scheduler in with `from_config` on the pipeline's own
scheduler config.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from models.diffusion import (
    DEFAULT_SCHEDULER,
    PIXEL_SPACE_OVERRIDES,
    SCHEDULERS,
    DigitsDiffusionPipeline,
    UNetFn,
    make_scheduler,
    scheduler_name,
    to_uint8,
)
from services.generate.prompts import ACCEPTED, digit_from_prompt
from services.generate.schemas import GenerateBody
from shared.errors import BundleError, InvalidParameterError

#: (step from 1, steps, preview or None) → None; may raise to stop the generation
StepHook = Callable[[int, int, Callable[[], np.ndarray] | None], None]
MAX_UPSCALE = 16


@dataclass
class Job:
    """One validated generation: its parameters, one seed per image, and preview cadence."""

    params: dict[str, Any]
    seeds: list[int]
    preview_every: int = 0


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One seeded CPU generator per image, so image i depends on seed i only."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


class Generator(ABC):
    """A loaded pipeline: what it accepts, its defaults, and how it runs one job."""

    kind: ClassVar[str]

    def __init__(self, pipeline: Any, defaults: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.defaults = defaults
        self.base_scheduler_config = pipeline.scheduler.config
        pipeline.set_progress_bar_config(disable=True)

    def scheduler(self, name: str) -> Any:
        """A fresh scheduler of kind `name` from the pipeline's own config (per request)."""
        return make_scheduler(name, self.base_scheduler_config)

    def common(self, body: GenerateBody) -> dict[str, Any]:
        """Steps, guidance and scheduler with the model's defaults filled in."""
        try:
            scheduler = scheduler_name(body.scheduler or self.defaults["scheduler"])
        except ValueError as exc:
            raise InvalidParameterError(f"scheduler: {exc}") from exc
        guidance = (
            self.defaults["guidance_scale"] if body.guidance_scale is None else body.guidance_scale
        )
        return {
            "steps": body.steps,
            "guidance_scale": float(guidance),
            "scheduler": scheduler,
            "num_images": body.num_images,
            "format": body.format,
        }

    @abstractmethod
    def resolve(self, body: GenerateBody) -> dict[str, Any]:
        """Validated generation parameters for a request; a bad one is a 422 naming the bound."""

    @abstractmethod
    def run(self, job: Job, hook: StepHook) -> tuple[list[np.ndarray], list[bool] | None]:
        """uint8 images (H, W) or (H, W, 3), and the pipeline's own safety flags if it has any."""

    @abstractmethod
    def smoke_test(self, directory: Path, manifest: dict[str, Any]) -> None:
        """Prove the loaded weights compute what the bundle says; BundleError if not."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for GET /v1/model and the schedulers route."""


class DigitsGenerator(Generator):
    """Class-conditional digits: `class` or a prompt naming a digit; pixel space."""

    kind = "class-conditional"

    def __init__(self, pipeline: DigitsDiffusionPipeline, manifest: dict[str, Any]) -> None:
        generation = manifest.get("generation", {})
        defaults = {
            "guidance_scale": float(generation.get("guidance_scale", 2.0)),
            "scheduler": generation.get("scheduler", DEFAULT_SCHEDULER),
            "steps": int(generation.get("steps", 25)),
        }
        super().__init__(pipeline, defaults)
        self.labels = [str(x) for x in manifest.get("labels", range(pipeline.num_classes))]
        self.size = pipeline.image_size
        self.unet_fn: UNetFn | None = None  # the ONNX variant's session, when it is served

    def scheduler(self, name: str) -> Any:
        """Per-request scheduler with the pixel-space overrides (see PIXEL_SPACE_OVERRIDES)."""
        return make_scheduler(name, self.base_scheduler_config, pixel_space=True)

    def resolve(self, body: GenerateBody) -> dict[str, Any]:
        if (body.prompt is None) == (body.class_label is None):
            raise InvalidParameterError(
                f"send exactly one of 'class' (0..9) or 'prompt' ({ACCEPTED})"
            )
        if body.class_label is not None:
            if body.class_label >= len(self.labels):
                raise InvalidParameterError(
                    f"class must be between 0 and {len(self.labels) - 1}; this model draws "
                    f"{', '.join(self.labels)}"
                )
            label = body.class_label
        else:
            label = digit_from_prompt(body.prompt or "", self.labels)
        negative = (
            digit_from_prompt(body.negative_prompt, self.labels, "negative_prompt")
            if body.negative_prompt
            else None
        )
        side = self._side(body)
        return {
            **self.common(body),
            "class": label,
            "label": self.labels[label],
            **({"prompt": body.prompt} if body.prompt is not None else {}),
            **({"negative_class": negative} if negative is not None else {}),
            "width": side,
            "height": side,
        }

    def _side(self, body: GenerateBody) -> int:
        width, height = (
            body.width or body.height or self.size,
            body.height or body.width or self.size,
        )
        scale = width // self.size
        if width != height or width % self.size or not 1 <= scale <= MAX_UPSCALE:
            raise InvalidParameterError(
                f"width and height: the digit model draws {self.size}x{self.size}; ask for a "
                f"square k*{self.size} with k in 1..{MAX_UPSCALE} (nearest-neighbour upscaled), "
                f"got {width}x{height}"
            )
        return width

    def run(self, job: Job, hook: StepHook) -> tuple[list[np.ndarray], list[bool] | None]:
        p = job.params
        count = p["num_images"]

        def callback(step: int, steps: int, sample: torch.Tensor) -> None:
            def preview() -> np.ndarray:
                return to_uint8((sample[0, 0].clamp(-1, 1).numpy() + 1) / 2)

            hook(step, steps, preview)

        images = self.pipeline(
            [p["class"]] * count,
            guidance_scale=p["guidance_scale"],
            num_inference_steps=p["steps"],
            generator=generators(job.seeds),
            scheduler=self.scheduler(p["scheduler"]),
            negative_class_labels=[p["negative_class"]] * count if "negative_class" in p else None,
            callback=callback,
            unet_fn=self.unet_fn,
        )
        scale = p["width"] // self.size
        pixels = [to_uint8(image) for image in images]
        return [np.kron(x, np.ones((scale, scale), dtype=np.uint8)) for x in pixels], None

    def smoke_test(self, directory: Path, manifest: dict[str, Any]) -> None:
        spec = manifest.get("pipeline", {})
        if "expected_outputs" not in spec or "sample_inputs" not in manifest:
            raise BundleError("the digits bundle has no smoke-test arrays (sample_inputs)")
        sample = np.load(directory / manifest["sample_inputs"], allow_pickle=False)
        expected = np.load(directory / spec["expected_outputs"], allow_pickle=False)
        labels, timestep = torch.arange(len(sample)), torch.tensor(spec["smoke_timestep"])
        with torch.no_grad():
            if self.unet_fn is not None:
                got = self.unet_fn(torch.from_numpy(sample), timestep, labels)
            else:
                got = self.pipeline.unet(
                    torch.from_numpy(sample), timestep, class_labels=labels
                ).sample
        diff = float(np.max(np.abs(got.numpy() - expected)))
        if diff > 1e-3:
            raise BundleError(
                f"smoke test failed: UNet output differs from the bundle's by {diff:.2e}"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pipeline": type(self.pipeline).__name__,
            "labels": self.labels,
            "native_size": [self.size, self.size],
            "size": {
                "rule": f"square k*{self.size}, k in 1..{MAX_UPSCALE} (nearest-neighbour upscale)",
                "default": [self.size, self.size],
            },
            "accepts": {"class": f"0..{len(self.labels) - 1}", "prompt": ACCEPTED},
        }


def pipeline_class(directory: Path) -> str:
    """The `_class_name` a diffusers pipeline directory declares in model_index.json."""
    index = directory / "model_index.json"
    if not index.is_file():
        raise BundleError(f"{directory} holds no diffusers pipeline (model_index.json is missing)")
    return str(json.loads(index.read_text()).get("_class_name", ""))


def load_generator(directory: Path, manifest: dict[str, Any], max_pixels: int) -> Generator:
    """Load the pipeline in `directory` (safetensors only) as the matching Generator."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # service logs are JSON lines, not tqdm bars
    transformers_logging.disable_progress_bar()
    name = pipeline_class(directory)
    options = {"use_safetensors": True, "local_files_only": True, "low_cpu_mem_usage": False}
    if name == DigitsDiffusionPipeline.__name__:
        return DigitsGenerator(
            DigitsDiffusionPipeline.from_pretrained(directory, **options), manifest
        )
    if name == "StableDiffusionPipeline":
        from diffusers import StableDiffusionPipeline

        from services.generate.stable_diffusion import StableDiffusionGenerator

        pipeline = StableDiffusionPipeline.from_pretrained(directory, **options)
        return StableDiffusionGenerator(pipeline, max_pixels)
    raise BundleError(
        f"pipeline class {name!r} is not served; the generate service serves "
        f"{DigitsDiffusionPipeline.__name__} and StableDiffusionPipeline"
    )


def scheduler_catalogue(pixel_space: bool) -> list[dict[str, Any]]:
    """Every scheduler a request may name, with its diffusers class and config overrides."""
    return [
        {
            "name": name,
            "class": cls.__name__,
            "config_overrides": {
                **overrides,
                **(PIXEL_SPACE_OVERRIDES.get(name, {}) if pixel_space else {}),
            },
        }
        for name, (cls, overrides) in SCHEDULERS.items()
    ]
