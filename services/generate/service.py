"""GenerateService: diffusion image generation (the digit model or a Stable Diffusion pipeline).

One generation runs at a time per process (`predict` holds a lock; the runtime's queue is
bounded), cost limits are checked in `preprocess` before a request queues, and the request
timeout is enforced between denoising steps as well as in the queue.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.generate.encode import encode_image, preview_png
from services.generate.pipelines import (
    DigitsGenerator,
    Generator,
    Job,
    load_generator,
    scheduler_catalogue,
)
from services.generate.routes import GenerateCall, router
from services.generate.safety import (
    NoSafetyChecker,
    PipelineSafetyChecker,
    SafetyChecker,
    withhold,
)
from services.generate.schemas import DEFAULT_STEPS, MAX_GUIDANCE, MAX_IMAGES, MAX_STEPS
from shared.bundle import Bundle
from shared.service import ModelService
from shared.settings import ServingSettings
from training.models.diffusion_bundle import onnx_unet_fn


class GenerateSettings(BaseSettings):
    """The generate service's own knobs (environment variables, prefix GENERATE_)."""

    model_config = SettingsConfigDict(env_prefix="GENERATE_", case_sensitive=False, extra="ignore")

    pipeline_dir: Path | None = Field(
        None, description="Serve this local diffusers pipeline directory instead of MODEL_URI."
    )
    max_pixels: int = Field(
        512 * 512, ge=64, description="Largest width x height of one generated image."
    )


class GenerateService(ModelService[GenerateCall, Job, dict[str, Any], dict[str, Any]]):
    """Prompt or class → images, one generation at a time."""

    name = "generate"
    router = router
    # one generation at a time, a short queue, and a timeout sized for diffusion on a CPU
    settings_defaults: ClassVar[dict[str, Any]] = {
        "max_batch_size": 1,
        "max_queue": 4,
        "request_timeout_s": 120.0,
    }

    def load(self, bundle: Bundle, variant: str, settings: ServingSettings) -> None:
        import torch

        torch.set_num_threads(settings.intra_op_threads())
        self.bundle = bundle
        self.timeout_s = settings.request_timeout_s
        self.generator: Generator = load_generator(
            bundle.path, bundle.manifest, GenerateSettings().max_pixels
        )
        if variant == "onnx" and isinstance(self.generator, DigitsGenerator):
            path = bundle.variant_file("onnx")
            self.generator.unet_fn = onnx_unet_fn(path, settings.intra_op_threads())
        self.safety = self.make_safety_checker(self.generator)
        self._lock = threading.Lock()

    def make_safety_checker(self, generator: Generator) -> SafetyChecker:
        """The hook: the pipeline's own checker when it has one; override to plug in another."""
        if getattr(generator.pipeline, "safety_checker", None) is not None:
            return PipelineSafetyChecker()
        return NoSafetyChecker()

    def warmup(self) -> None:
        self.generator.smoke_test(self.bundle.path, self.bundle.manifest)

    def describe(self) -> dict[str, Any]:
        return {
            "task": "generate",
            **self.generator.describe(),
            "defaults": self.generator.defaults,
            "safety_checker": self.safety.name,
            "source": self.bundle.manifest.get("source", {}),
            "metrics": self.bundle.manifest.get("metrics", {}),
        }

    def catalogue(self) -> dict[str, Any]:
        """GET /v1/generate/schedulers: choices, defaults and bounds for this model."""
        return {
            "schedulers": scheduler_catalogue(isinstance(self.generator, DigitsGenerator)),
            "default_scheduler": self.generator.defaults["scheduler"],
            "steps": {"default": DEFAULT_STEPS, "min": 1, "max": MAX_STEPS},
            "guidance_scale": {
                "default": self.generator.defaults["guidance_scale"],
                "min": 0.0,
                "max": MAX_GUIDANCE,
            },
            "num_images": {"default": 1, "min": 1, "max": MAX_IMAGES},
            "formats": ["png", "jpeg"],
            "request_timeout_s": self.timeout_s,
            **self.generator.describe(),
        }

    def preprocess(self, request: GenerateCall) -> Job:
        """Every bound is checked here, before the request queues (a 422 names the bound)."""
        params = self.generator.resolve(request.body)
        base = request.body.seed if request.body.seed is not None else secrets.randbelow(2**31)
        params["seed"] = base
        return Job(
            params=params,
            seeds=[base + i for i in range(params["num_images"])],
            model=request.model,
            deadline=time.monotonic() + self.timeout_s,
            timeout_s=self.timeout_s,
            progress=request.progress,
            cancelled=request.cancelled,
            preview_every=request.body.preview_every,
        )

    def predict(self, items: list[Job]) -> list[dict[str, Any]]:
        """Generations one after another, whatever the batch size."""
        return [self._generate(job) for job in items]

    def _generate(self, job: Job) -> dict[str, Any]:
        with self._lock:
            started = time.monotonic()
            images, pipeline_flags = self.generator.run(job, self._hook(job))
            generated = time.monotonic()
            flags = self.safety.check(images, job.params, pipeline_flags)
            images = withhold(images, flags)
            encoded = [
                encode_image(image, job.params, job.model, seed, job.params["format"])
                for image, seed in zip(images, job.seeds, strict=True)
            ]
        return {
            "params": job.params,
            "images": [
                {"image": data, "seed": seed, "flagged": flag}
                for data, seed, flag in zip(encoded, job.seeds, flags, strict=True)
            ],
            "safety": {"checker": self.safety.name, "ran": self.safety.name is not None},
            "timing_ms": {
                "queue": (started - job.created) * 1000,
                "generate": (generated - started) * 1000,
                "encode": (time.monotonic() - generated) * 1000,
            },
        }

    def _hook(self, job: Job) -> Any:
        every = job.preview_every

        def hook(step: int, steps: int, preview: Any) -> None:
            job.check(step, steps)
            if job.progress is None:
                return
            event: dict[str, Any] = {"step": step, "steps": steps}
            if preview is not None and every and (step % every == 0 or step == steps):
                event["preview"] = base64.b64encode(preview_png(preview())).decode()
            job.progress(event)

        return hook

    def postprocess(self, output: dict[str, Any], request: GenerateCall) -> dict[str, Any]:
        images = [
            {**image, "image": base64.b64encode(image["image"]).decode()}
            for image in output["images"]
        ]
        return {**output, "images": images}
