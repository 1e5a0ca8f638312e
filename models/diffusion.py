"""The digits diffusion model: a class-conditional UNet2DModel and the project's pipeline class.

`DigitsDiffusionPipeline` is a diffusers `DiffusionPipeline` (a `unet` and a `scheduler`), so
`save_pretrained` / `from_pretrained(local_dir, use_safetensors=True)` round-trip it with
safetensors weights and JSON configs, no pickles. Class `num_classes` (the last class
embedding) is the null class of classifier-free guidance: training drops the condition to it,
sampling mixes the conditional and null predictions with the guidance scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TRAIN_TIMESTEPS = 1000

#: request-time schedulers: name → (class, config overrides); every one is built `from_config`
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmsolver++": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    "euler": (EulerDiscreteScheduler, {}),
    # "leading" spacing keeps the first sigma finite-sized: from t=999 of the cosine schedule
    # (sigma ~2e4) float32 rounding makes its sigma_down the root of a negative number (NaN).
    "euler-ancestral": (
        EulerAncestralDiscreteScheduler,
        {"timestep_spacing": "leading", "steps_offset": 1},
    ),
}
SCHEDULER_ALIASES = {
    "dpm-solver++": "dpmsolver++",
    "dpm++": "dpmsolver++",
    "dpmsolver": "dpmsolver++",
    "euler_a": "euler-ancestral",
    "euler-a": "euler-ancestral",
    "euler_ancestral": "euler-ancestral",
}
DEFAULT_SCHEDULER = "dpmsolver++"
# Pixel-space models must not trust a data prediction made at t=999 of the cosine schedule:
# alpha_bar is 2e-9 there, so x0 = (x - sqrt(1 - a) eps) / sqrt(a) amplifies any epsilon error
# 2e4-fold. DPM-Solver++ clamps its data prediction to [-1, 1] (DDPM and DDIM clip through
# clip_sample); Euler, which cannot clamp, starts one step below t=999 ("leading" spacing).
PIXEL_SPACE_OVERRIDES: dict[str, dict[str, Any]] = {
    "dpmsolver++": {"thresholding": True, "sample_max_value": 1.0},
    "euler": {"timestep_spacing": "leading", "steps_offset": 1},
}

#: called after every denoising step with (step index from 1, steps, current sample)
StepCallback = Callable[[int, int, torch.Tensor], None]
#: a UNet stand-in (an ONNX session): (sample, 0-dim timestep, class labels) -> prediction
UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def scheduler_name(name: str) -> str:
    """The canonical scheduler name for `name` (case-insensitive, aliases allowed)."""
    key = name.strip().lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return key


def make_scheduler(name: str, config: Any, pixel_space: bool = False) -> SchedulerMixin:
    """A fresh scheduler of kind `name` built from another scheduler's config."""
    key = scheduler_name(name)
    cls, overrides = SCHEDULERS[key]
    if pixel_space:
        overrides = {**overrides, **PIXEL_SPACE_OVERRIDES.get(key, {})}
    return cls.from_config(config, **overrides)


def unet_config(
    image_size: int = 16,
    num_classes: int = 10,
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = False,
    norm_num_groups: int = 8,
) -> dict[str, Any]:
    """UNet2DModel kwargs: one gray channel in and out, `num_classes + 1` class embeddings."""
    levels = len(block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if attention and levels > 1:  # self-attention at the coarsest resolution only
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return {
        "sample_size": image_size,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "down_block_types": down,
        "up_block_types": up,
        "num_class_embeds": num_classes + 1,
        "norm_num_groups": norm_num_groups,
    }


def build_unet(config: dict[str, Any]) -> UNet2DModel:
    """A freshly initialized UNet2DModel from `unet_config` kwargs."""
    return UNet2DModel(**config)


def training_scheduler(beta_schedule: str, prediction_type: str) -> DDPMScheduler:
    """The DDPM noise schedule the model is trained with (and that samplers derive from)."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=True,
    )


def training_target(
    scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return noise


class DigitsDiffusionPipeline(DiffusionPipeline):
    """Class-conditional digit generation with classifier-free guidance (pixel space)."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def num_classes(self) -> int:
        """Real classes; the null class is index `num_classes`."""
        return int(self.unet.config.num_class_embeds) - 1

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size)

    def guided_output(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        labels: torch.Tensor,
        negative: torch.Tensor,
        guidance_scale: float,
        unet_fn: UNetFn | None = None,
    ) -> torch.Tensor:
        """uncond + w * (cond - uncond), with one UNet call on the stacked batch."""

        def unet(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            if unet_fn is not None:
                return unet_fn(x, timestep, c)
            return self.unet(x, timestep, class_labels=c).sample

        if guidance_scale == 1.0:
            return unet(sample, labels)
        if guidance_scale == 0.0:
            return unet(sample, negative)
        cond, uncond = unet(torch.cat([sample, sample]), torch.cat([labels, negative])).chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int],
        *,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 25,
        generator: torch.Generator | list[torch.Generator] | None = None,
        scheduler: SchedulerMixin | None = None,
        negative_class_labels: Sequence[int] | None = None,
        callback: StepCallback | None = None,
        unet_fn: UNetFn | None = None,
    ) -> np.ndarray:
        """Generate one image per label: float32 (N, H, W) in [0, 1].

        `scheduler` overrides the pipeline's own for this call only (the pipeline is not
        changed); `negative_class_labels` replaces the null class in guidance ("not a 3");
        `unet_fn` runs instead of the torch UNet (the served ONNX variant).
        """
        count = len(class_labels)
        if any(not 0 <= int(c) < self.num_classes for c in class_labels):
            raise ValueError(f"class labels must be in 0..{self.num_classes - 1}")
        sampler = scheduler or self.scheduler
        sampler.set_timesteps(num_inference_steps, device=self.device)
        labels = torch.tensor([int(c) for c in class_labels], device=self.device)
        null = [self.num_classes] * count
        negative = torch.tensor(
            list(negative_class_labels) if negative_class_labels is not None else null,
            device=self.device,
        )
        size = self.image_size
        shape = (count, self.unet.config.in_channels, size, size)
        sample = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        sample = sample * sampler.init_noise_sigma
        step_kwargs = {"generator": generator} if _accepts_generator(sampler) else {}
        timesteps = sampler.timesteps
        for index, timestep in enumerate(timesteps):
            model_input = sampler.scale_model_input(sample, timestep)
            output = self.guided_output(
                model_input, timestep, labels, negative, guidance_scale, unet_fn
            )
            sample = sampler.step(output, timestep, sample, **step_kwargs).prev_sample
            if callback is not None:
                callback(index + 1, len(timesteps), sample)
        images = (torch.nan_to_num(sample).clamp(-1, 1) + 1) / 2
        return images[:, 0].cpu().float().numpy()


def _accepts_generator(scheduler: SchedulerMixin) -> bool:
    import inspect

    return "generator" in inspect.signature(scheduler.step).parameters


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] float images to uint8 (round half up, as PIL does)."""
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def build_pipeline(
    unet: UNet2DModel, beta_schedule: str, prediction_type: str
) -> DigitsDiffusionPipeline:
    """The pipeline a training run saves: its UNet and the default sampler (DPM-Solver++)."""
    base = training_scheduler(beta_schedule, prediction_type)
    return DigitsDiffusionPipeline(
        unet=unet, scheduler=make_scheduler(DEFAULT_SCHEDULER, base.config, pixel_space=True)
    )
