"""The explain report's model-level views: PCA and t-SNE of the penultimate embeddings,
per-layer activation histograms, the first conv's filters and Grad-CAM measured per layer.

Each returns its figures (numbers the report prints and writes as JSON) and writes its PNG
into the report folder, which `training.explain_report` logs to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: t-SNE's perplexity, capped at a third of the points (scikit-learn requires < n)
PERPLEXITY = 30.0


def _capture(
    model: nn.Module, module: nn.Module, inputs: np.ndarray, pre: bool, batch: int = 256
) -> np.ndarray:
    """What `module` receives (pre) or returns while `model` runs over `inputs`."""
    seen: list[torch.Tensor] = []

    def keep(value: Any) -> None:  # a copy: an in-place ReLU after the module would edit it
        seen.append((value[0] if isinstance(value, tuple) else value).detach().clone())

    if pre:
        handle = module.register_forward_pre_hook(lambda _, args: keep(args))
    else:
        handle = module.register_forward_hook(lambda _, __, out: keep(out))
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch):
                model(x[start : start + batch])
    finally:
        handle.remove()
    return torch.cat(seen).numpy()


def penultimate(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """(N, K) embeddings: what the classification head receives (after global pooling)."""
    from models.classify import head_name

    return _capture(model, getattr(model, head_name(model)), inputs, pre=True)


def projections(
    model: nn.Module, inputs: np.ndarray, labels: np.ndarray, out: Path, seed: int = 0
) -> dict[str, float]:
    """PCA and t-SNE (scikit-learn) of the penultimate embeddings, coloured by true label,
    to `embeddings.png`; silhouette scores by label say how far the classes separate
    (raw pixels are the baseline a model that learned nothing would not beat)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    embeddings = penultimate(model, inputs).astype(np.float64)
    pca = PCA(n_components=2, random_state=seed)
    flat = pca.fit_transform(embeddings)
    perplexity = min(PERPLEXITY, (len(inputs) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)
    figures = {
        "points": float(len(inputs)),
        "silhouette_pixels": float(silhouette_score(inputs.reshape(len(inputs), -1), labels)),
        "silhouette_embedding": float(silhouette_score(embeddings, labels)),
        "silhouette_pca": float(silhouette_score(flat, labels)),
        "silhouette_tsne": float(silhouette_score(tsne, labels)),
        "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
    }
    _scatter(
        [(flat, f"PCA ({figures['pca_explained_variance']:.0%} of variance)"), (tsne, "t-SNE")],
        labels,
        out / "embeddings.png",
    )
    return figures


def _scatter(panels: list[tuple[np.ndarray, str]], labels: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
    for ax, (points, title) in zip(np.atleast_1d(axes), panels, strict=True):
        for label in np.unique(labels):
            keep = labels == label
            ax.scatter(points[keep, 0], points[keep, 1], s=8, label=str(label))
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].legend(markerscale=2, fontsize=7, loc="best")
    fig.suptitle("penultimate embeddings of held-out digits, coloured by true label")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def activation_histograms(
    model: nn.Module, layers: list[str], inputs: np.ndarray, out: Path
) -> dict[str, dict[str, float]]:
    """Histograms of every value each layer outputs over `inputs` to `activations.png`, and
    per layer: mean, std, the share at or below zero (after BatchNorm, before the next ReLU)
    and the 99th percentile."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    modules = dict(model.named_modules())
    stats: dict[str, dict[str, float]] = {}
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), squeeze=False)
    for ax, name in zip(axes[0], layers, strict=True):
        values = _capture(model, modules[name], inputs, pre=False).ravel()
        stats[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "share_at_or_below_zero": float(np.mean(values <= 0)),
            "p99": float(np.percentile(values, 99)),
        }
        ax.hist(values, bins=60, log=True)
        ax.set_title(name, fontsize=8)
    fig.suptitle("activation distributions per layer (log count)")
    fig.tight_layout()
    fig.savefig(out / "activations.png", dpi=100)
    plt.close(fig)
    return stats


def filters(model: nn.Module, out: Path) -> dict[str, Any]:
    """The first conv's filters as a grid, `filters.png`."""
    from models import render
    from models.attribution import first_conv

    name, conv = first_conv(model)
    weights = conv.weight.detach().numpy()
    render.filter_grid(weights).save(out / "filters.png")
    return {"layer": name, "shape": list(weights.shape)}
