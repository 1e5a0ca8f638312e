"""What one explain request asks for once validated (a job), and the work that answers it.

Jobs run inside `predict`, one after another, each on its own; nothing here touches HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from captum.attr import LayerActivation
from PIL import Image

from models import render
from models.attribution import Explainer, first_conv, random_map, to_map
from models.fidelity import score
from models.methods import PARAMS_OF, MethodParams


@dataclass(frozen=True)
class ExplainJob:
    """One image, one or more methods (compare), a target and what to return."""

    image: Image.Image = field(repr=False)
    x: np.ndarray = field(repr=False)
    methods: tuple[str, ...]
    params: dict[str, MethodParams]
    target: int | None  # None: the predicted class
    return_map: bool = False
    fidelity: bool = False
    compare: bool = False


@dataclass(frozen=True)
class ActivationsJob:
    """The top channels of one layer's feature maps for one image."""

    x: np.ndarray = field(repr=False)
    layer: str
    top_n: int


def used_params(method: str, params: MethodParams) -> dict[str, Any]:
    """The parameters that apply to `method`, defaults filled in (echoed in the response)."""
    return {k: v for k, v in params.model_dump().items() if k in PARAMS_OF[method]}


def prediction(probs: torch.Tensor, index: int, labels: list[str]) -> dict[str, Any]:
    return {"index": index, "label": labels[index], "score": float(probs[index])}


def explain_one(
    explainer: Explainer, job: ExplainJob, x: torch.Tensor, method: str, target: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Attribute, score (when asked) and describe one method; returns (map, result)."""
    params = job.params[method]
    started = time.perf_counter()
    if method == "random":
        attribution = None
        saliency = random_map(explainer.spec, params.seed)
    else:
        attribution = explainer.attribute(x, target, method, params)
        saliency = to_map(attribution)
    result: dict[str, Any] = {
        "method": method,
        "params": used_params(method, params),
        "timing_ms": (time.perf_counter() - started) * 1000,
    }
    if job.fidelity or job.compare:
        scores = score(
            explainer,
            x,
            saliency,
            target,
            attribution=attribution,
            method=method,
            params=params,
            seed=params.seed,
        )
        result["fidelity"] = scores.to_dict()
    return saliency, result


def run_explain(explainer: Explainer, job: ExplainJob, labels: list[str]) -> dict[str, Any]:
    """/v1/explain and /v1/explain/compare."""
    started = time.perf_counter()
    x = torch.from_numpy(job.x)[None]
    probs = explainer.probabilities(x)[0]
    predicted = int(torch.argmax(probs))
    target = predicted if job.target is None else job.target
    head = {
        "prediction": prediction(probs, predicted, labels),
        "target": prediction(probs, target, labels),
    }
    if not job.compare:
        method = job.methods[0]
        saliency, result = explain_one(explainer, job, x, method, target)
        body = {**head, **result, "heatmap": render.png_base64(render.overlay(job.image, saliency))}
        if job.return_map:
            body["attribution"] = {
                "shape": list(saliency.shape),
                "values": np.round(saliency.astype(np.float64), 6).tolist(),
            }
        return body
    tiles: list[tuple[str, Image.Image]] = [(f"input: {labels[target]}", job.image)]
    results = []
    for method in job.methods:
        saliency, result = explain_one(explainer, job, x, method, target)
        results.append(result)
        tiles.append((method, render.overlay(job.image, saliency)))
    panel = render.png_base64(render.panel(tiles))
    return {
        **head,
        "panel": panel,
        "results": results,
        "timing_ms": (time.perf_counter() - started) * 1000,
    }


def run_activations(explainer: Explainer, job: ActivationsJob, labels: list[str]) -> dict:
    """/v1/explain/activations: the strongest channels (by mean activation) of one layer."""
    started = time.perf_counter()
    x = torch.from_numpy(job.x)[None]
    layer = explainer.layers[job.layer]
    with torch.no_grad():
        maps = LayerActivation(explainer.model, layer).attribute(x)[0].numpy()
    means = maps.reshape(maps.shape[0], -1).mean(axis=1)
    top = np.argsort(-means, kind="stable")[: job.top_n]
    grid = render.plane_grid(maps[top], [f"#{int(i)}" for i in top])
    probs = explainer.probabilities(x)[0]
    return {
        "layer": job.layer,
        "shape": list(maps.shape),
        "channels": [{"index": int(i), "mean_activation": float(means[i])} for i in top],
        "grid": render.png_base64(grid),
        "prediction": prediction(probs, int(torch.argmax(probs)), labels),
        "timing_ms": (time.perf_counter() - started) * 1000,
    }


def run_filters(explainer: Explainer) -> dict[str, Any]:
    """The first conv's filters as the gray input sees them (summed over repeated channels)."""
    name, conv = first_conv(explainer.model)
    weights = conv.weight.detach().numpy()
    grid = render.filter_grid(weights)
    return {"layer": name, "shape": list(weights.shape), "grid": render.png_base64(grid)}
