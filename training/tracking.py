"""MLflow logging helpers shared by the training jobs and the export stage.

They keep a job readable: one call logs a nested config as params, a classification report as
metrics, a figure as a PNG artifact. Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def git_commit(cwd: Path | None = None) -> str:
    """`git rev-parse HEAD` of the checkout; "unknown" outside a repository or before a commit."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys with string values (lists as JSON-ish text)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_CHARS]
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    """Log a (possibly nested) config as MLflow params."""
    import mlflow

    mlflow.log_params(flatten(params))


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one (C, H, W) input, counted by torch's FlopCounterMode."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(counter.get_total_flops())


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str], prefix: str = "test"
) -> dict[str, float]:
    """Accuracy, macro F1 and per-class precision/recall/F1, named `<prefix>_<metric>[_<label>]`."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    metrics = {
        f"{prefix}_accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}_macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    for i, name in enumerate(label_names):
        metrics[f"{prefix}_precision_{name}"] = float(precision[i])
        metrics[f"{prefix}_recall_{name}"] = float(recall[i])
        metrics[f"{prefix}_f1_{name}"] = float(f1[i])
    return metrics


def confusion_matrix_figure(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]
) -> Figure:
    """A labelled confusion-matrix heat map (rows: true label, columns: predicted)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(label_names))))
    fig = Figure(figsize=(1.0 + 0.55 * len(label_names), 0.8 + 0.5 * len(label_names)))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(label_names))
    ax.set_xticks(ticks, label_names)
    ax.set_yticks(ticks, label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(
            col,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if count > threshold else "black",
        )
    ax.set_title(f"confusion matrix (n={int(matrix.sum())})")
    fig.tight_layout()
    return fig


def learning_curve_figure(history: Mapping[str, Sequence[float]]) -> Figure:
    """Loss and accuracy per epoch for train and val, side by side."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split in ("train", "val"):
            values = history.get(f"{split}_{metric}", [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def log_figure(fig: Figure, artifact_file: str) -> None:
    """Log a matplotlib Figure as a PNG artifact of the active run."""
    import mlflow

    mlflow.log_figure(fig, artifact_file)
