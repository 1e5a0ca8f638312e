"""The attribution methods and their parameters: what the explain service accepts and the
training report runs, one definition for both."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from shared.requests import RequestBody

#: `random` ranks pixels at random: the floor every method's fidelity should beat
BASELINE_METHODS = ("random",)

Method = Literal[
    "saliency",
    "cam",
    "integrated_gradients",
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "occlusion",
    "smoothgrad",
]
GradientMethod = Literal[
    "saliency", "cam", "integrated_gradients", "grad_cam", "guided_backprop", "guided_grad_cam"
]
METHODS: tuple[str, ...] = get_args(Method)
GRADIENT_METHODS: tuple[str, ...] = get_args(GradientMethod)

_IG = {"steps", "baseline", "blur_sigma", "seed"}
_CAM = {"layer"}
#: which `params` apply to which method; any other is a 422 (not silently ignored)
PARAMS_OF: dict[str, set[str]] = {
    "saliency": set(),
    "cam": set(),
    "integrated_gradients": _IG,
    "grad_cam": _CAM,
    "guided_backprop": set(),
    "guided_grad_cam": _CAM,
    "occlusion": {"window", "stride"},
    "smoothgrad": {"samples", "noise_std", "base", "nt_type", "seed"} | _IG | _CAM,
    "random": {"seed"},
}


class MethodParams(RequestBody):
    """Method parameters, each bounded so one request cannot hold the CPU for minutes."""

    steps: int = Field(32, ge=1, le=256, description="integrated_gradients: path steps.")
    baseline: Literal["black", "blurred", "noise"] = Field(
        "black", description="integrated_gradients: the input the path starts from."
    )
    blur_sigma: float = Field(
        4.0, ge=0.5, le=64, description="integrated_gradients, blurred baseline: sigma (px)."
    )
    layer: str | None = Field(
        None,
        max_length=200,
        description="grad_cam, guided_grad_cam: dotted module name; default the last conv "
        "block with a spatial map (see GET /v1/model).",
    )
    window: int = Field(4, ge=2, le=512, description="occlusion: square window (model px).")
    stride: int = Field(2, ge=1, le=512, description="occlusion: window stride (model px).")
    samples: int = Field(16, ge=1, le=64, description="smoothgrad: noisy samples averaged.")
    noise_std: float = Field(
        0.15, gt=0, le=1.0, description="smoothgrad: noise std as a fraction of the pixel range."
    )
    base: GradientMethod = Field("saliency", description="smoothgrad: the gradient method.")
    nt_type: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = Field(
        "smoothgrad", description="smoothgrad: how the noisy attributions are combined."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every random draw.")
