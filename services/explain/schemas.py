"""Explain requests and responses; bounds live here and in `models.methods` (a request over
one is a 422)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.methods import Method, MethodParams
from shared.requests import RequestBody
from shared.responses import ModelRef

CompareMethod = Method | Literal["random"]

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


class ExplainBody(RequestBody):
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


class CompareBody(RequestBody):
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


class ActivationsBody(RequestBody):
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
