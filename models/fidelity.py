"""How faithful and how sparse an attribution is: deletion/insertion, Captum metrics, Gini.

- deletion AUC: turn the most-attributed pixels black, most positive first, in equal steps,
  and average the target probability along the way; a faithful map drops it fast (lower).
- insertion AUC: start from black and put the most-attributed pixels back; higher is better.
- infidelity (Captum): expected squared error between attribution·perturbation and the output
  change that perturbation causes, with the attribution scale fitted (normalize=True); lower.
- sensitivity (Captum `sensitivity_max`): the largest relative change of the explanation when
  the input moves by at most 0.02; lower is more stable.
- Gini and top-10% mass of |map|: how concentrated the explanation is.

`layer_scores` / `best_layer` measure Grad-CAM at every candidate layer (deletion and insertion
AUC, map resolution) and pick the most faithful: the explain service's default layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.metrics import infidelity, sensitivity_max

from models.attribution import Explainer
from models.methods import MethodParams

DELETION_STEPS = 16
INFIDELITY_SAMPLES = 16
INFIDELITY_NOISE_STD = 0.1
SENSITIVITY_SAMPLES = 4
SENSITIVITY_RADIUS = 0.02


@dataclass(frozen=True)
class Scores:
    """The fidelity and sparsity figures of one explanation."""

    deletion_auc: float
    insertion_auc: float
    infidelity: float | None
    sensitivity: float | None
    gini: float
    top10_mass: float
    timing_ms: float

    def to_dict(self) -> dict[str, float | None]:
        return {
            "deletion_auc": self.deletion_auc,
            "insertion_auc": self.insertion_auc,
            "infidelity": self.infidelity,
            "sensitivity": self.sensitivity,
            "gini": self.gini,
            "top10_mass": self.top10_mass,
            "timing_ms": self.timing_ms,
        }


@dataclass(frozen=True)
class LayerScore:
    """Grad-CAM at one layer: its map's resolution and mean deletion/insertion AUC."""

    layer: str
    resolution: tuple[int, int]
    deletion_auc: float
    insertion_auc: float

    @property
    def fidelity(self) -> float:
        """insertion - deletion: how much faster the map's pixels restore than remove the class."""
        return self.insertion_auc - self.deletion_auc

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "resolution": list(self.resolution),
            "deletion_auc": round(self.deletion_auc, 4),
            "insertion_auc": round(self.insertion_auc, 4),
            "fidelity": round(self.fidelity, 4),
        }


def layer_scores(
    explainer: Explainer, layers: dict[str, tuple[int, int]], inputs: torch.Tensor
) -> list[LayerScore]:
    """Grad-CAM of the predicted class at each of `layers` (name -> map (h, w)) on `inputs`
    (N, C, H, W), scored by deletion and insertion: 1 + 2 * (DELETION_STEPS + 1) passes each."""
    from models.attribution import to_map

    targets = explainer.probabilities(inputs).argmax(1).tolist()
    scores = []
    for layer, resolution in layers.items():
        params = MethodParams(layer=layer)
        deletion, insertion = [], []
        for i, target in enumerate(targets):
            x = inputs[i : i + 1]
            saliency = to_map(explainer.attribute(x, target, "grad_cam", params))
            d, n = deletion_insertion(explainer, x, saliency, target)
            deletion.append(auc(d))
            insertion.append(auc(n))
        scores.append(
            LayerScore(layer, resolution, float(np.mean(deletion)), float(np.mean(insertion)))
        )
    return scores


def best_layer(scores: list[LayerScore]) -> str:
    """The most faithful layer (insertion - deletion) among those with a map of at least 2x2
    (a 1x1 map says nothing spatial); on a tie, the finer map."""
    spatial = [s for s in scores if min(s.resolution) >= 2] or scores
    return max(
        spatial, key=lambda s: (round(s.fidelity, 3), s.resolution[0] * s.resolution[1])
    ).layer


def evaluations(explanation_cost: int, captum_metrics: bool) -> int:
    """Model passes the scores of one explanation cost (added to the explanation's own)."""
    passes = 2 * (DELETION_STEPS + 1)
    if captum_metrics:
        passes += INFIDELITY_SAMPLES + (SENSITIVITY_SAMPLES + 1) * explanation_cost
    return passes


def deletion_insertion(
    explainer: Explainer, x: torch.Tensor, saliency: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Target probability curves (DELETION_STEPS + 1 points each) for deletion and insertion."""
    height, width = saliency.shape
    order = np.argsort(-saliency.ravel(), kind="stable")
    counts = np.linspace(0, height * width, DELETION_STEPS + 1).round().astype(int)
    rank = np.empty(height * width, dtype=np.int64)
    rank[order] = np.arange(height * width)
    masks = np.stack([(rank < c).reshape(height, width) for c in counts]).astype(np.float32)
    mask = torch.from_numpy(masks)[:, None]  # (steps + 1, 1, H, W): 1 = top pixel
    black = explainer.black
    deleted = x * (1 - mask) + black * mask
    inserted = black * (1 - mask) + x * mask
    probs = explainer.probabilities(torch.cat([deleted, inserted]))[:, target].numpy()
    return probs[: len(counts)], probs[len(counts) :]


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps over [0, 1]."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def gini(saliency: np.ndarray) -> float:
    """Gini index of |map|: 0 when every pixel has the same mass, near 1 when one has it all."""
    values = np.sort(np.abs(saliency).ravel().astype(np.float64))
    total = values.sum()
    if total == 0:
        return 0.0
    n = len(values)
    index = np.arange(1, n + 1)
    return float(np.sum((2 * index - n - 1) * values) / (n * total))


def top_mass(saliency: np.ndarray, fraction: float = 0.1) -> float:
    """Share of |map| held by the top `fraction` of pixels."""
    values = np.sort(np.abs(saliency).ravel())[::-1]
    total = values.sum()
    if total == 0:
        return 0.0
    k = max(1, round(fraction * len(values)))
    return float(values[:k].sum() / total)


def _perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn_like(inputs) * INFIDELITY_NOISE_STD
    return noise, inputs - noise


def captum_scores(
    explainer: Explainer,
    x: torch.Tensor,
    attribution: torch.Tensor,
    target: int,
    method: str,
    params: MethodParams,
) -> tuple[float, float]:
    """(infidelity, sensitivity_max) of one explanation, both from Captum."""
    attributions = (
        attribution.expand_as(x) / attribution.shape[1]
        if attribution.shape[1] == 1
        else attribution
    )
    infid = infidelity(
        explainer.model,
        _perturb,
        x,
        attributions,
        target=target,
        n_perturb_samples=INFIDELITY_SAMPLES,
        normalize=True,
    )

    def explain(
        inputs: tuple[torch.Tensor, ...], target: torch.Tensor | int
    ) -> tuple[torch.Tensor, ...]:
        return (explainer.attribute(inputs[0], target, method, params),)

    sens = sensitivity_max(
        explain,
        x,
        perturb_radius=SENSITIVITY_RADIUS,
        n_perturb_samples=SENSITIVITY_SAMPLES,
        max_examples_per_batch=SENSITIVITY_SAMPLES,
        target=target,
    )
    return float(infid[0]), float(sens[0])


def score(
    explainer: Explainer,
    x: torch.Tensor,
    saliency: np.ndarray,
    target: int,
    *,
    attribution: torch.Tensor | None,
    method: str,
    params: MethodParams,
    seed: int = 0,
) -> Scores:
    """Every figure for one explanation; Captum's two need the raw attribution (not `random`)."""
    started = time.perf_counter()
    deletion, insertion = deletion_insertion(explainer, x, saliency, target)
    infid = sens = None
    if attribution is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            infid, sens = captum_scores(explainer, x, attribution, target, method, params)
    return Scores(
        deletion_auc=auc(deletion),
        insertion_auc=auc(insertion),
        infidelity=infid,
        sensitivity=sens,
        gini=gini(saliency),
        top10_mass=top_mass(saliency),
        timing_ms=(time.perf_counter() - started) * 1000,
    )
