"""Digits: scikit-learn's 1,797 real 8x8 handwritten digits, a fixed split, serving's preprocessing.

Every example goes through `shared.media.image_to_array(gray_to_image(u8), spec)`, the function
a service runs on a request, so training, export and serving see identical inputs. The split is
fixed (stratified 70/15/15, seed 0) and independent of the training seed, so the export stage can
rebuild the exact held-out test set from a manifest's preprocessing and class subset. Training
options live here too: augmentation policies (`train_augmentation`) and the curriculum's
difficulty score and sampler.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from shared.media import ImageSpec, gray_to_image, image_to_array

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
ALL_CLASSES = tuple(range(10))
AUGMENTATIONS = ("none", "affine", "randaugment", "trivialaugment")


def image_spec(size: int = 32, channels: int = 3) -> ImageSpec:
    """The digits ImageSpec: square `size`, `channels` copies of the gray plane, mean/std 0.5."""
    return ImageSpec(size, size, channels, (0.5,) * channels, (0.5,) * channels)


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 (N, 8, 8) images (0..16 scaled to 0..255) and their digit labels."""
    return _digits()


def split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified train/val/test split of all 1,797 digits (sorted indices)."""
    _, labels = _digits()
    everything = np.arange(len(labels))
    train, rest = train_test_split(
        everything, test_size=VAL_FRACTION + TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    val, test = train_test_split(
        rest,
        test_size=TEST_FRACTION / (VAL_FRACTION + TEST_FRACTION),
        stratify=labels[rest],
        random_state=SPLIT_SEED,
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def normalize_classes(classes: Sequence[int] | None) -> list[int]:
    """The sorted digit subset (all ten when None); duplicates and non-digits are errors."""
    if classes is None:
        return list(ALL_CLASSES)
    chosen = [int(c) for c in classes]
    if len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(f"classes must be distinct and non-empty, got {list(classes)}")
    if any(c not in ALL_CLASSES for c in chosen):
        raise ValueError(f"classes must be digits 0..9, got {chosen}")
    if len(chosen) < 2:
        raise ValueError("a classifier needs at least two classes")
    return sorted(chosen)


@dataclass(frozen=True)
class DigitsSplit:
    """One split restricted to a class subset: raw uint8 images, labels re-indexed 0..k-1."""

    name: str
    indices: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    label_names: list[str]


def load_splits(classes: Sequence[int] | None = None) -> dict[str, DigitsSplit]:
    """Train, val and test splits for a digit subset; label i is the digit `label_names[i]`."""
    chosen = normalize_classes(classes)
    images, digits = _digits()
    remap = np.full(10, -1, dtype=np.int64)
    remap[chosen] = np.arange(len(chosen))
    names = [str(c) for c in chosen]
    splits = {}
    for name, idx in split_indices().items():
        kept = idx[np.isin(digits[idx], chosen)]
        splits[name] = DigitsSplit(name, kept, images[kept], remap[digits[kept]], names)
    return splits


def split_hash(splits: dict[str, DigitsSplit]) -> str:
    """sha256 of the example indices of every split: the identity of the data a model saw."""
    payload = {name: [int(i) for i in split.indices] for name, split in sorted(splits.items())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def preprocess(images: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """uint8 (N, h, w) images to float32 (N, C, H, W) through serving's own preprocessing."""
    arrays = [image_to_array(gray_to_image(image), spec) for image in images]
    shape = (0, spec.channels, spec.height, spec.width)
    return np.stack(arrays) if arrays else np.zeros(shape, dtype=np.float32)


@dataclass(frozen=True)
class HeldOut:
    """The held-out test set as the export stage needs it."""

    images: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    split_hash: str


def load_test_set(spec: ImageSpec, classes: Sequence[int] | None = None) -> HeldOut:
    """The test split for a class subset: uint8 8x8 images, preprocessed inputs, labels, names."""
    splits = load_splits(classes)
    test = splits["test"]
    return HeldOut(
        test.images,
        preprocess(test.images, spec),
        test.labels,
        test.label_names,
        split_hash(splits),
    )


class Jitter:
    """Small random affine jitter of a preprocessed (C, H, W) tensor; borders fill with background.

    It runs after serving's preprocessing (on the upsampled image, bilinear), so clean examples
    never take a training-only path. No flips: a mirrored 2 is not a 2. The affine runs on
    `x - background` with fill 0, because torchvision blends a non-zero fill wrongly at the edge
    under bilinear interpolation (up to a quarter of the fill value off; pytorch/vision#8083).
    """

    def __init__(self, spec: ImageSpec) -> None:
        background = [(0.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
        self.background = torch.tensor(background, dtype=torch.float32).view(-1, 1, 1)
        self.affine = v2.RandomAffine(
            degrees=8,
            translate=(0.08, 0.08),
            scale=(0.9, 1.1),
            interpolation=v2.InterpolationMode.BILINEAR,
            fill=0.0,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(x - self.background) + self.background


class AutoAugment:
    """A torchvision v2 auto-augment policy on the uint8 image behind a preprocessed tensor.

    RandAugment (2 ops at magnitude 9 of 31) and TrivialAugmentWide (1 op, random magnitude) are
    defined on uint8 pixels (posterize, solarize, equalize), so the tensor is mapped back to the
    0..255 image serving's preprocessing made, augmented, and normalized again. Background is 0,
    the policies' fill. TrivialAugmentWide rotates up to 135 degrees, enough to turn a 6 into a
    9: the curriculum study measures what that costs.
    """

    def __init__(self, spec: ImageSpec, policy: str) -> None:
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
        if policy == "randaugment":
            self.policy: v2.Transform = v2.RandAugment(num_ops=2, magnitude=9)
        elif policy == "trivialaugment":
            self.policy = v2.TrivialAugmentWide()
        else:
            raise ValueError(f"unknown auto-augment policy {policy!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x * self.std + self.mean) * 255).round().clamp(0, 255).to(torch.uint8)
        return (self.policy(pixels).to(torch.float32) / 255 - self.mean) / self.std


def train_augmentation(
    spec: ImageSpec, policy: str = "affine"
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The training-only augmentation `policy` (one of AUGMENTATIONS) for `spec`; None for none."""
    if policy not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {policy!r}; choose one of {AUGMENTATIONS}")
    if policy == "none":
        return None
    return Jitter(spec) if policy == "affine" else AutoAugment(spec, policy)


def difficulty(images: np.ndarray, labels: np.ndarray, folds: int = 5) -> np.ndarray:
    """Each example's difficulty: the out-of-fold cross-entropy of a pixel logistic regression.

    A linear model on the raw 8x8 pixels is a reference that finds typical, cleanly written
    digits easy and ambiguous or odd ones hard; out-of-fold, so an example is scored by a model
    that never saw it (in-fold losses would reward memorization). Deterministic: lbfgs, a fixed
    fold split.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = min(folds, int(np.bincount(labels).min()))
    if folds < 2:
        raise ValueError("the curriculum's difficulty score needs two examples of every class")
    pixels = images.reshape(len(images), -1).astype(np.float64) / 255.0
    cv = StratifiedKFold(folds, shuffle=True, random_state=SPLIT_SEED)
    reference = LogisticRegression(max_iter=2000)
    proba = cross_val_predict(reference, pixels, labels, cv=cv, method="predict_proba")
    return -np.log(proba[np.arange(len(labels)), labels].clip(min=1e-12))


def competence(epoch: int, epochs: int, start: float) -> float:
    """Fraction of the easiest examples the curriculum trains on at `epoch` (0-based).

    Linear pacing (Platanios et al., 2019): `start` at the first epoch, all of the data from
    half-way on, so the second half of training is the plain schedule.
    """
    ramp = max(1, epochs // 2)
    return min(1.0, start + (1.0 - start) * epoch / ramp)


class CurriculumSampler(Sampler[int]):
    """Easy to hard: each epoch draws as many examples as the full set from the easiest pool.

    The pool is the `competence(epoch)` fraction with the lowest difficulty, repeated in fresh
    random orders to fill the epoch, so every epoch has the plain schedule's number of steps
    (the same budget). Call `set_epoch` before each pass; the order follows (seed, epoch).
    """

    def __init__(self, scores: np.ndarray, *, epochs: int, start: float, seed: int) -> None:
        if not 0.0 < start <= 1.0:
            raise ValueError(f"the curriculum's start fraction must be in (0, 1], got {start}")
        self.order = np.argsort(scores, kind="stable")
        self.epochs, self.start, self.seed, self.epoch = epochs, start, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pool_size(self) -> int:
        fraction = competence(self.epoch, self.epochs, self.start)
        return max(1, math.ceil(fraction * len(self.order)))

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        pool = self.order[: self.pool_size()]
        rng = np.random.default_rng([self.seed, self.epoch])
        repeats = math.ceil(len(self.order) / len(pool))
        drawn = np.concatenate([rng.permutation(pool) for _ in range(repeats)])
        return iter(int(i) for i in drawn[: len(self.order)])


class TensorDigits(Dataset):
    """Preprocessed inputs and labels, with an optional per-example transform."""

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.inputs = torch.from_numpy(np.ascontiguousarray(inputs))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[index]
        return (self.transform(x) if self.transform else x), self.labels[index]


def make_loader(
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """A single-process loader; shuffling follows `seed` (or `sampler` orders), reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDigits(inputs, labels, transform),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
    )


def stratified_subset(split: DigitsSplit, limit: int | None) -> DigitsSplit:
    """At most `limit` examples of a split, keeping class proportions (for smoke runs)."""
    if limit is None or limit >= len(split.labels):
        return split
    keep, _ = train_test_split(
        np.arange(len(split.labels)),
        train_size=limit,
        stratify=split.labels,
        random_state=SPLIT_SEED,
    )
    keep = np.sort(keep)
    return DigitsSplit(
        split.name, split.indices[keep], split.images[keep], split.labels[keep], split.label_names
    )
