"""Verification and retrieval metrics of an embedding model, shared by training and export.

Verification: balanced held-out pairs (every same-digit pair plus as many different-digit pairs,
drawn with a fixed seed) scored by cosine similarity: ROC AUC, equal error rate, and the
threshold that maximizes accuracy (chosen on validation, applied to test). Retrieval: each
held-out image queries the reference gallery (the training images): recall@k (a same-digit item
among the top k) and mAP over the full ranking. The export stage runs the same functions on
onnxruntime embeddings, so the served variants are measured exactly as the PyTorch model was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAIR_SEED = 0
RECALL_AT = (1, 5)


@torch.no_grad()
def embed(model: nn.Module, inputs: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embeddings of preprocessed inputs, in eval mode, as float32 numpy."""
    model.eval()
    parts = [
        model(torch.from_numpy(inputs[i : i + batch_size])).numpy()
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


def balanced_pairs(labels: np.ndarray, seed: int = PAIR_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) of indices, same (P,) bool): all same-label pairs, as many different ones."""
    first, second = np.triu_indices(len(labels), k=1)
    same = labels[first] == labels[second]
    positives = np.flatnonzero(same)
    negatives = np.flatnonzero(~same)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(negatives, size=min(len(positives), len(negatives)), replace=False)
    keep = np.sort(np.concatenate([positives, chosen]))
    return np.stack([first[keep], second[keep]], axis=1), same[keep]


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair (embeddings are unit vectors; renormalized to be safe)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    return np.sum(unit[pairs[:, 0]] * unit[pairs[:, 1]], axis=1)


def equal_error_rate(same: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, the threshold where false accepts and false rejects are closest)."""
    fpr, tpr, thresholds = roc_curve(same, scores)
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2), float(thresholds[i])


def best_threshold(same: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): the cut `score >= threshold → same` with the highest accuracy.

    Every cut between consecutive sorted scores is tried; the threshold is their midpoint.
    """
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], same[order].astype(np.int64)
    total_same = int(hits.sum())
    # accepting the top m: correct = same among them + different among the rest
    accepted_same = np.concatenate([[0], np.cumsum(hits)])
    m = np.arange(len(ranked) + 1)
    correct = accepted_same + (len(ranked) - m) - (total_same - accepted_same)
    best = int(np.argmax(correct))
    if best == 0:
        threshold = float(ranked[0]) + 1e-6
    elif best == len(ranked):
        threshold = float(ranked[-1])
    else:
        threshold = float((ranked[best - 1] + ranked[best]) / 2)
    return threshold, float(correct[best] / len(ranked))


def retrieval(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: tuple[int, ...] = RECALL_AT,
) -> dict[str, float]:
    """recall@k for each k and mAP of the full ranking, by cosine similarity."""
    order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    relevant = gallery_labels[order] == query_labels[:, None]
    metrics = {f"recall_at_{k}": float(np.mean(relevant[:, :k].any(axis=1))) for k in ks}
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / ranks
    hits = relevant.sum(axis=1).clip(min=1)
    metrics["map"] = float(np.mean((precision * relevant).sum(axis=1) / hits))
    return metrics


def pixel_auc(inputs: np.ndarray, labels: np.ndarray) -> float:
    """Verification AUC of the raw input pixels on the balanced pairs: the floor to beat.

    Cosine similarity of the flattened preprocessed images (what the encoder starts from); an
    encoder that learned nothing useful scores no better (about 0.88 on the test digits).
    """
    pairs, same = balanced_pairs(labels)
    return float(roc_auc_score(same, pair_scores(inputs.reshape(len(inputs), -1), pairs)))


def validation_summary(
    val: tuple[np.ndarray, np.ndarray], gallery: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """Per-epoch model selection: validation pair AUC and recall@1 against the gallery."""
    pairs, same = balanced_pairs(val[1])
    ranked = retrieval(val[0], val[1], gallery[0], gallery[1], ks=(1,))
    return {
        "val_auc": float(roc_auc_score(same, pair_scores(val[0], pairs))),
        "val_recall_at_1": ranked["recall_at_1"],
    }


@dataclass(frozen=True)
class Evaluation:
    """Held-out metrics plus what the ROC plot needs."""

    metrics: dict[str, float]
    threshold: float
    test_same: np.ndarray
    test_scores: np.ndarray


def evaluate(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    gallery: tuple[np.ndarray, np.ndarray],
) -> Evaluation:
    """Threshold from validation pairs; test verification; test queries against the gallery.

    Each argument is (embeddings, labels).
    """
    val_pairs, val_same = balanced_pairs(val[1])
    threshold, val_accuracy = best_threshold(val_same, pair_scores(val[0], val_pairs))
    test_pairs, test_same = balanced_pairs(test[1])
    scores = pair_scores(test[0], test_pairs)
    eer, _ = equal_error_rate(test_same, scores)
    metrics = {
        "test_auc": float(roc_auc_score(test_same, scores)),
        "test_eer": eer,
        "test_verification_accuracy": float(np.mean((scores >= threshold) == test_same)),
        "val_verification_accuracy": val_accuracy,
        "threshold": threshold,
        "test_pairs": float(len(test_same)),
        **{f"test_{k}": v for k, v in retrieval(test[0], test[1], gallery[0], gallery[1]).items()},
    }
    return Evaluation(metrics, threshold, test_same, scores)


def roc_figure(same: np.ndarray, scores: np.ndarray, threshold: float) -> Figure:
    """The test ROC curve with its AUC, and the operating point of the stored threshold."""
    from matplotlib.figure import Figure

    fpr, tpr, _ = roc_curve(same, scores)
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(same, scores):.4f}")
    accepted = scores >= threshold
    point = (np.mean(accepted[~same]), np.mean(accepted[same]))
    ax.scatter(*point, color="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"verification ROC ({len(same)} test pairs)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def projection_figure(embeddings: np.ndarray, labels: np.ndarray, names: list[str]) -> Figure:
    """A 2-D PCA projection of embeddings, coloured by label."""
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    points = PCA(n_components=2, random_state=0).fit_transform(embeddings)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for index, name in enumerate(names):
        chosen = labels == index
        ax.scatter(points[chosen, 0], points[chosen, 1], s=8, label=name)
    ax.set_title(f"test embeddings, PCA to 2-D (n={len(labels)})")
    ax.legend(markerscale=2, fontsize=7, ncols=2)
    fig.tight_layout()
    return fig


def log_plots(
    result: Evaluation, test_embeddings: np.ndarray, test_labels: np.ndarray, names: list[str]
) -> None:
    """The ROC curve and the PCA projection, as PNG artifacts of the active MLflow run."""
    from training.tracking import log_figure

    roc = roc_figure(result.test_same, result.test_scores, result.threshold)
    log_figure(roc, "plots/roc_curve.png")
    projection = projection_figure(test_embeddings, test_labels, names)
    log_figure(projection, "plots/test_embeddings_pca.png")
