"""The generate service: diffusion image generation (the digit model or a Stable Diffusion
pipeline, from the registry or from a local GENERATE_PIPELINE_DIR).

One generation runs at a time per process (the `generate` pool has one worker and a short
queue), cost limits are checked in preprocess before a request queues, and the request timeout
is enforced between denoising steps as well as in the queue. With `stream` the steps arrive as
server-sent events.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from models.diffusion_bundle import onnx_unet_fn
from services.generate.encode import encode_image, preview_png
from services.generate.pipelines import (
    DigitsGenerator,
    Generator,
    Job,
    StepHook,
    load_generator,
    scheduler_catalogue,
)
from services.generate.safety import (
    NoSafetyChecker,
    PipelineSafetyChecker,
    PromptFilter,
    SafetyChecker,
    withhold,
)
from services.generate.schemas import (
    DEFAULT_STEPS,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_STEPS,
    GenerateBody,
    GenerateResponse,
)
from shared.bundle import Bundle, directory_sha256
from shared.errors import BundleError
from shared.predlog import summarize_input
from shared.service import Call, Endpoint, Lane, ModelService, ModelSpec, Pool, Service
from shared.settings import ServingSettings
from shared.sources import LOCAL_VERSION

log = logging.getLogger("modelplane.generate")


class GenerateSettings(ServingSettings):
    """The generate service's settings: its own knobs and defaults sized for diffusion."""

    generate_pipeline_dir: Path | None = Field(
        None, description="Serve this local diffusers pipeline directory instead of MODEL_URI."
    )
    generate_pipeline_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Expected sha256 of GENERATE_PIPELINE_DIR (every file; see GET /v1/model's "
        "pipeline_sha256); a different directory is refused. Unset: hashed and logged only.",
    )
    generate_max_pixels: int = Field(
        512 * 512, ge=64, description="Largest width x height of one generated image."
    )
    generate_blocked_terms: str = Field(
        "",
        max_length=100_000,
        description="Comma-separated words or phrases a prompt may not contain (whole words, "
        "any case); such a request is a 422 with code prompt_blocked. Empty: no filter.",
    )
    # one generation at a time, a short queue, and a timeout sized for diffusion on a CPU
    max_queue: int = Field(4, ge=1, le=100_000, description="Generations that may wait.")
    request_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Deadline of a request, checked between steps too."
    )


class GenerateModel(ModelService):
    """Prompt or class → images."""

    def load(self, bundle: Bundle, variant: str, settings: GenerateSettings) -> None:
        import torch

        torch.set_num_threads(settings.intra_op_threads())
        self.bundle = bundle
        self.timeout_s = settings.request_timeout_s
        self.pipeline_sha256 = None
        if variant == LOCAL_VERSION:  # a local directory has no manifest checksums: hash it all
            self.pipeline_sha256 = verify_pipeline_dir(bundle, settings.generate_pipeline_sha256)
        self.generator: Generator = load_generator(
            bundle.path, bundle.manifest, settings.generate_max_pixels
        )
        if variant == "onnx" and isinstance(self.generator, DigitsGenerator):
            path = bundle.variant_file("onnx")
            self.generator.unet_fn = onnx_unet_fn(path, settings.intra_op_threads())
        self.safety = self.make_safety_checker(self.generator)
        self.prompt_filter = PromptFilter.parse(settings.generate_blocked_terms)

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
            "prompt_filter": {"blocked_terms": len(self.prompt_filter.terms)},
            "source": self.bundle.manifest.get("source", {}),
            "metrics": self.bundle.manifest.get("metrics", {}),
            **({"pipeline_sha256": self.pipeline_sha256} if self.pipeline_sha256 else {}),
        }

    def catalogue(self, _: None, call: Call) -> dict[str, Any]:
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

    def check(self, body: GenerateBody) -> Job:
        """Every bound is checked here, before the request queues (a 422 names the bound)."""
        self.prompt_filter.check(body.prompt)
        params = self.generator.resolve(body)
        base = body.seed if body.seed is not None else secrets.randbelow(2**31)
        params["seed"] = base
        seeds = [base + i for i in range(params["num_images"])]
        return Job(params=params, seeds=seeds, preview_every=body.preview_every)

    def queued(self, job: Job) -> dict[str, Any]:
        """The stream's first event: the parameters the generation will use."""
        return {"params": job.params}

    def generate(self, job: Job, call: Call) -> dict[str, Any]:
        """One generation (the pool runs one at a time): images, safety, timings."""
        queued_ms = call.elapsed_ms()  # since the request was read: checks and the wait
        started = time.monotonic()
        images, pipeline_flags = self.generator.run(job, self._hook(job, call))
        generated = time.monotonic()
        flags = self.safety.check(images, job.params, pipeline_flags)
        images = withhold(images, flags)
        encoded = [
            encode_image(image, job.params, call.model, seed, job.params["format"])
            for image, seed in zip(images, job.seeds, strict=True)
        ]
        timing = {
            "queue": queued_ms,
            "generate": (generated - started) * 1000,
            "encode": (time.monotonic() - generated) * 1000,
            "total": call.elapsed_ms(),
        }
        return {
            "params": job.params,
            "images": [
                {"image": base64.b64encode(data).decode(), "seed": seed, "flagged": flag}
                for data, seed, flag in zip(encoded, job.seeds, flags, strict=True)
            ],
            "safety": {"checker": self.safety.name, "ran": self.safety.name is not None},
            "timing_ms": {k: round(v, 2) for k, v in timing.items()},
        }

    def agreement(self, mine: dict[str, Any], theirs: dict[str, Any]) -> float:
        """Shadow traffic (the same seeds): 1 minus the mean absolute pixel difference of each
        pair of images, on a 0-1 scale; 0 for a pair of another size or count."""
        pairs = list(zip(mine["images"], theirs["images"], strict=False))
        if not pairs or len(mine["images"]) != len(theirs["images"]):
            return 0.0
        scores = []
        for ours, other in pairs:
            a, b = (decoded_pixels(image["image"]) for image in (ours, other))
            scores.append(0.0 if a.shape != b.shape else 1.0 - float(np.abs(a - b).mean()) / 255)
        return float(np.mean(scores))

    def summarize_call(self, job: Job, output: dict[str, Any]) -> dict[str, Any]:
        """The prediction log's item: the parameters (prompts as hash and length, never their
        text) and the images' count, size and safety flags."""
        asked = {
            key: summarize_input(value) if key.endswith("prompt") and value else value
            for key, value in job.params.items()
        }
        images = output["images"]
        return {
            "input": asked,
            "output": {
                "images": len(images),
                "width": job.params.get("width"),
                "height": job.params.get("height"),
                "flagged": sum(bool(image["flagged"]) for image in images),
                "generate_ms": output["timing_ms"].get("generate"),
            },
        }

    def _hook(self, job: Job, call: Call) -> StepHook:
        every = job.preview_every

        def hook(step: int, steps: int, preview: Any) -> None:
            where = f" at step {step} of {steps}; ask for fewer steps, images or pixels"
            call.check(where)
            if not call.streaming:
                return
            event: dict[str, Any] = {"step": step, "steps": steps}
            if preview is not None and every and (step % every == 0 or step == steps):
                event["preview"] = base64.b64encode(preview_png(preview())).decode()
            call.emit("progress", event)

        return hook


def verify_pipeline_dir(bundle: Bundle, expected: str | None) -> str:
    """The local pipeline directory's sha256 (`directory_sha256`), logged; a mismatch with
    GENERATE_PIPELINE_SHA256 refuses the load before any of its files is read."""
    digest = directory_sha256(bundle.path)
    log.info("pipeline directory %s: sha256 %s", bundle.path, digest)
    if expected and digest != expected.lower():
        raise BundleError(
            f"pipeline directory {bundle.path} has sha256 {digest}, but "
            f"GENERATE_PIPELINE_SHA256 is {expected.lower()}: its files changed; refusing to load"
        )
    return digest


class GenerateService(Service):
    """POST /v1/generate (JSON or SSE) and GET /v1/generate/schedulers."""

    name = "generate"
    settings_class = GenerateSettings
    models = (
        ModelSpec("generate", GenerateModel, "generate", local_setting="generate_pipeline_dir"),
    )
    pools = (Pool("generate", workers=1, queue="max_queue"), Pool("catalogue", workers=1))
    endpoints = (
        Endpoint(
            "/v1/generate",
            Lane.STREAMING,
            "Generate images from a prompt (or a class); JSON, or server-sent events with stream.",
            body=GenerateBody,
            preprocess=GenerateModel.check,
            call=GenerateModel.generate,
            first_event=GenerateModel.queued,
            pool="generate",
            response=GenerateResponse,
            shadow=True,  # agreement: pixels of the same seeds (GenerateModel.agreement)
            errors=(401, 413, 415, 422, 503, 504),
        ),
        Endpoint(
            "/v1/generate/schedulers",
            Lane.DIRECT,
            "Schedulers, defaults and bounds a generate request may use with this model.",
            method="GET",
            call=GenerateModel.catalogue,
            pool="catalogue",
            errors=(401, 503),
        ),
    )


def decoded_pixels(encoded: str) -> np.ndarray:
    """A base64 image of an answer as RGB pixels (float)."""
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)
