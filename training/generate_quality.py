"""Quality of generated digits: a judge classifier's recognition rate and a Fréchet distance.

No Inception weights exist offline, so the judge is a small CNN trained here on the same fixed
digits split (train part) at the generator's resolution. Recognition = the share of samples
it labels as the requested digit. The Fréchet distance is computed on the judge's penultimate
features (128-d, after ReLU) between generated samples and the real test digits; the same
distance between the real train and test digits is the floor to read it against.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn

from models.diffusion import DigitsDiffusionPipeline, make_scheduler
from training import data as digits

FEATURES = 128


class Judge(nn.Module):
    """two conv blocks → 128-d features → 10 logits, for (N, 1, S, S) inputs in [-1, 1]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def judge_outputs(judge: Judge, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, penultimate features) for float (N, 1, S, S) inputs in [-1, 1]."""
    judge.eval()
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    feats = torch.cat([judge.features(x[i : i + 512]) for i in range(0, len(x), 512)])
    return judge.head(feats).argmax(1).numpy(), feats.double().numpy()


def train_judge(
    splits: dict[str, digits.DigitsSplit], size: int, epochs: int, seed: int
) -> tuple[Judge, float]:
    """Train the judge on the train split (with affine jitter); returns it and test accuracy."""
    torch.manual_seed(seed)
    spec = digits.image_spec(size, channels=1)
    inputs = {name: digits.preprocess(s.images, spec) for name, s in splits.items()}
    loader = digits.make_loader(
        inputs["train"],
        splits["train"].labels,
        batch_size=64,
        transform=digits.train_augmentation(spec),
        shuffle=True,
        seed=seed,
    )
    judge = Judge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 3e-3, total_steps=epochs * len(loader)
    )
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        judge.train()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(judge(x), y).backward()
            optimizer.step()
            schedule.step()
    predicted, _ = judge_outputs(judge, inputs["test"])
    return judge, float(np.mean(predicted == splits["test"].labels))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets.

    Tr((S_a S_b)^(1/2)) is computed as Tr((R S_b R)^(1/2)) with R = S_a^(1/2): both are
    symmetric PSD, so eigendecompositions suffice and singular covariances (dead ReLU units,
    few samples) need no regularization.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = float(np.sqrt(np.clip(inner, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


@dataclass
class Reference:
    """The judge and the real features generated samples are compared with."""

    judge: Judge
    judge_accuracy: float
    test_features: np.ndarray
    floor: float  # Fréchet distance of real train digits (same sample size) to the test digits


def build_reference(
    splits: dict[str, digits.DigitsSplit], size: int, epochs: int, seed: int, per_class: int
) -> Reference:
    """Train the judge; the floor is the distance of `per_class` real train digits per class
    to the test digits (the sample size every measured setting uses, so they compare)."""
    judge, accuracy = train_judge(splits, size, epochs, seed)
    spec = digits.image_spec(size, channels=1)
    _, test_features = judge_outputs(judge, digits.preprocess(splits["test"].images, spec))
    train = splits["train"]
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(train.labels == c))[:per_class] for c in range(10)]
    )
    _, train_features = judge_outputs(judge, digits.preprocess(train.images[keep], spec))
    return Reference(
        judge, accuracy, test_features, frechet_distance(train_features, test_features)
    )


def sample_digits(
    pipeline: DigitsDiffusionPipeline,
    per_class: int,
    *,
    guidance_scale: float,
    scheduler: str,
    steps: int,
    seed: int,
    batch_size: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` samples of every digit: (images in [0, 1] (N, S, S), requested labels)."""
    labels = np.repeat(np.arange(pipeline.num_classes), per_class)
    images = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images.append(
            pipeline(
                chunk.tolist(),
                guidance_scale=guidance_scale,
                num_inference_steps=steps,
                generator=generators,
                scheduler=make_scheduler(scheduler, pipeline.scheduler.config, pixel_space=True),
            )
        )
    return np.concatenate(images), labels


def score(reference: Reference, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Recognition rate and Fréchet distance of generated [0, 1] images."""
    predicted, features = judge_outputs(reference.judge, images[:, None] * 2.0 - 1.0)
    return {
        "recognized": float(np.mean(predicted == labels)),
        "frechet": frechet_distance(features, reference.test_features),
    }


def evaluate_setting(
    pipeline: DigitsDiffusionPipeline,
    reference: Reference,
    per_class: int,
    setting: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Sample with one (guidance, scheduler, steps) setting and score it; timing included."""
    started = time.perf_counter()
    images, labels = sample_digits(pipeline, per_class, seed=seed, **setting)
    seconds = time.perf_counter() - started
    return {
        **setting,
        **score(reference, images, labels),
        "seconds_per_image": seconds / len(labels),
    }


def grid(images: np.ndarray, columns: int, scale: int = 4) -> np.ndarray:
    """uint8 grid of [0, 1] (N, S, S) images, nearest-upscaled by `scale`, 1-pixel gaps."""
    count, size = len(images), images.shape[-1]
    rows = -(-count // columns)
    cell = size * scale + 1
    canvas = np.full((rows * cell + 1, columns * cell + 1), 64, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        big = np.kron(np.clip(image, 0, 1), np.ones((scale, scale)))
        y, x = r * cell + 1, c * cell + 1
        canvas[y : y + size * scale, x : x + size * scale] = np.rint(big * 255).astype(np.uint8)
    return canvas


def settings_to_measure(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The guidance sweep (DPM-Solver++, `--eval-steps`) and the scheduler/steps comparison."""
    n = args.eval_steps
    sweep = [
        (f"guidance_{g:g}", {"guidance_scale": g, "scheduler": "dpmsolver++", "steps": n})
        for g in args.guidance_sweep
    ]
    g = args.guidance_scale
    samplers = [
        ("dpmsolver++", max(1, n * 2 // 5)),
        ("ddim", n),
        ("euler", n),
        ("euler-ancestral", n),
        ("ddpm", n),
        ("ddpm", args.ddpm_eval_steps),
    ]
    compare = [
        (
            f"{name.replace('+', 'p')}_{steps}",
            {"guidance_scale": g, "scheduler": name, "steps": steps},
        )
        for name, steps in samplers
    ]
    return sweep + compare


def measure(
    pipeline: DigitsDiffusionPipeline, reference: Reference, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Score every setting; log `quality.<setting>.<metric>` metrics and a table artifact."""
    rows = []
    for key, setting in settings_to_measure(args):
        row = evaluate_setting(pipeline, reference, args.eval_per_class, setting, args.seed + 1)
        rows.append({"setting": key, **row})
        mlflow.log_metrics(
            {
                f"quality.{key}.recognized": row["recognized"],
                f"quality.{key}.frechet": row["frechet"],
                f"quality.{key}.seconds_per_image": row["seconds_per_image"],
            }
        )
        print(
            f"[generate] {key:>22}: recognized {row['recognized']:.1%}  "
            f"Fréchet {row['frechet']:.2f}  {row['seconds_per_image']:.3f} s/image",
            flush=True,
        )
    mlflow.log_dict(rows, "quality/sweep.json")
    mlflow.log_text(quality_table(rows), "quality/sweep.md")
    return rows


def quality_table(rows: list[dict[str, Any]]) -> str:
    """The measured settings as a Markdown table."""
    lines = [
        "| setting | scheduler | steps | guidance | recognized | Fréchet | s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['setting']} | {r['scheduler']} | {r['steps']} | {r['guidance_scale']:g} | "
        f"{r['recognized']:.1%} | {r['frechet']:.2f} | {r['seconds_per_image']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"
