"""Explain requests and responses; parameter bounds live here, so a request over one is a 422."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from shared.requests import RequestBody
from shared.responses import ModelRef

#: `random` ranks pixels at random: the floor every method's fidelity should beat
BASELINE_METHODS = ("random",)

Method = Literal[
    "saliency",
    "integrated_gradients",
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "occlusion",
    "smoothgrad",
]
CompareMethod = Method | Literal["random"]
GradientMethod = Literal[
    "saliency", "integrated_gradients", "grad_cam", "guided_backprop", "guided_grad_cam"
]
METHODS: tuple[str, ...] = get_args(Method)
GRADIENT_METHODS: tuple[str, ...] = get_args(GradientMethod)

#: an 8x8 PNG with a bright square: the request examples explain a real image
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAG0lEQVR42mNggAJGhv8MDAyMDAxMMBFMBh4AAD6RAQiQaiMF"
    "AAAAAElFTkSuQmCC"
)


def _example(**body: object) -> ConfigDict:
    """One complete request as the schema's example (docs and fuzzing start from it)."""
    return ConfigDict(json_schema_extra={"examples": [{"image": EXAMPLE_IMAGE, **body}]})


#: the bound on model passes (forward, or forward + backward) one request may cost
MAX_EVALUATIONS = 2048

_IG = {"steps", "baseline", "blur_sigma", "seed"}
_CAM = {"layer"}
#: which `params` apply to which method; any other is a 422 (not silently ignored)
PARAMS_OF: dict[str, set[str]] = {
    "saliency": set(),
    "integrated_gradients": _IG,
    "grad_cam": _CAM,
    "guided_backprop": set(),
    "guided_grad_cam": _CAM,
    "occlusion": {"window", "stride"},
    "smoothgrad": {"samples", "noise_std", "base", "nt_type", "seed"} | _IG | _CAM,
    "random": {"seed"},
}

Image = Annotated[
    str,
    Field(
        description="Base64 PNG or JPEG bytes (a data: URL prefix is allowed).",
        max_length=16 * 1024 * 1024,
    ),
]
Target = Annotated[
    Literal["predicted"] | Annotated[int, Field(ge=0, le=100_000)],
    Field(description='"predicted" (the top class) or a class index to explain.'),
]


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


class ExplainJSONRequest(RequestBody):
    """POST /v1/explain."""

    model_config = _example(
        method="integrated_gradients", params={"steps": 8}, return_map=True, fidelity=True
    )

    image: Image
    method: Method
    target: Target = "predicted"
    params: MethodParams = Field(default_factory=MethodParams)
    return_map: bool = Field(False, description="Also return the raw normalized map.")
    fidelity: bool = Field(False, description="Also score the explanation (see Fidelity).")


class CompareJSONRequest(RequestBody):
    """POST /v1/explain/compare."""

    model_config = _example(
        methods=["saliency", "grad_cam", "occlusion", "random"], params={"occlusion": {"stride": 4}}
    )

    image: Image
    methods: list[CompareMethod] = Field(
        default_factory=lambda: ["saliency", "integrated_gradients", "grad_cam", "random"],
        min_length=1,
        max_length=8,
    )
    target: Target = "predicted"
    params: dict[CompareMethod, MethodParams] = Field(
        default_factory=dict, description="Per-method parameters, keyed by method."
    )


class ActivationsJSONRequest(RequestBody):
    """POST /v1/explain/activations."""

    model_config = _example(top_n=4)

    image: Image
    layer: str | None = Field(
        None, max_length=200, description="Dotted module name; default the Grad-CAM layer."
    )
    top_n: int = Field(16, ge=1, le=64, description="Channels shown, strongest mean first.")


class Prediction(BaseModel):
    index: int
    label: str
    score: float = Field(..., description="Softmax probability.")


class Fidelity(BaseModel):
    """How faithful and how concentrated one explanation is."""

    deletion_auc: float = Field(
        ..., description="Mean target probability as top pixels turn black (lower is better)."
    )
    insertion_auc: float = Field(
        ..., description="Mean target probability as top pixels return on black (higher better)."
    )
    infidelity: float | None = Field(
        None, description="Captum infidelity: error of attribution·noise vs output change (lower)."
    )
    sensitivity: float | None = Field(
        None, description="Captum sensitivity_max: relative change under tiny noise (lower)."
    )
    gini: float = Field(..., description="Gini of |map|: 0 spread evenly, 1 one pixel.")
    top10_mass: float = Field(..., description="Share of |map| in the top 10% of pixels.")
    timing_ms: float


class AttributionMap(BaseModel):
    shape: list[int] = Field(..., description="[height, width] of the model input.")
    values: list[list[float]] = Field(..., description="Signed, scaled to max |value| = 1.")


class ExplainResponse(BaseModel):
    model: ModelRef
    method: str
    params: dict[str, object] = Field(..., description="The parameters used (defaults filled).")
    target: Prediction
    prediction: Prediction
    heatmap: str = Field(..., description="Base64 PNG: |attribution| over the input, its size.")
    attribution: AttributionMap | None = None
    fidelity: Fidelity | None = None
    timing_ms: float = Field(..., description="Time spent attributing.")


class MethodResult(BaseModel):
    method: str
    params: dict[str, object]
    fidelity: Fidelity
    timing_ms: float


class CompareResponse(BaseModel):
    model: ModelRef
    target: Prediction
    prediction: Prediction
    panel: str = Field(..., description="Base64 PNG: the input, then one overlay per method.")
    results: list[MethodResult]
    timing_ms: float


class Channel(BaseModel):
    index: int
    mean_activation: float


class ActivationsResponse(BaseModel):
    model: ModelRef
    layer: str
    shape: list[int] = Field(..., description="[channels, height, width] of the layer output.")
    channels: list[Channel]
    grid: str = Field(..., description="Base64 PNG grid of the top channels' feature maps.")
    prediction: Prediction
    timing_ms: float


class FiltersResponse(BaseModel):
    model: ModelRef
    layer: str
    shape: list[int] = Field(..., description="[out, in, kh, kw] of the first conv's weights.")
    grid: str = Field(..., description="Base64 PNG grid, one tile per filter.")
