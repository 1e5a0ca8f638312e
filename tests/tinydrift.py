"""Digits for drift tests: a fitted tiny classify bundle with a drift reference, clean held-out
digits, and the corruptions live traffic should be caught with (rotated, inverted, noisy).

The tiny classifier (tests/tinymodels.py) is fitted on digits [0, 1200); the held-out rest is
shuffled (seeded) into the reference and the clean traffic, disjoint halves of one
distribution (consecutive digits share writers, so contiguous blocks would differ for real).
Pixels stay on the scale `tinymodels` fits on (scikit-learn's 0..16 as uint8).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.media import encode_png, gray_to_image, image_to_array
from tests.tinymodels import SPEC, seed_cache
from training.export.reference import add_reference

_HELD_OUT = 1200 + np.random.default_rng(0).permutation(597)
REFERENCE = np.sort(_HELD_OUT[:297])
CLEAN = np.sort(_HELD_OUT[297:])
TOP = 16


def digit_pixels(rows: np.ndarray) -> np.ndarray:
    """scikit-learn's digits `rows` as uint8 (N, 8, 8) on the 0..16 scale."""
    from sklearn.datasets import load_digits

    return load_digits().images[rows].astype(np.uint8)


def _noisy(images: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(7).normal(0, 4, size=images.shape)
    return np.clip(images + noise, 0, TOP).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rotated": lambda images: np.rot90(images, 1, axes=(1, 2)).copy(),
    "inverted": lambda images: (TOP - images).astype(np.uint8),
    "noisy": _noisy,
}


def model_inputs(images: np.ndarray) -> np.ndarray:
    """What the service feeds the model for these images (PNG is lossless: the same arrays)."""
    return np.stack([image_to_array(gray_to_image(image), SPEC) for image in images])


def pngs(images: np.ndarray) -> list[bytes]:
    return [encode_png(gray_to_image(image)) for image in images]


def seed_drift_cache(cache_dir: Path) -> Path:
    """A cached fitted classify bundle whose manifest carries a drift reference."""
    bundle_dir = seed_cache(cache_dir, fitted=True)
    inputs = model_inputs(digit_pixels(REFERENCE))
    add_reference(bundle_dir, "classifier/1", inputs, "297 of digits 1200-1796 (seeded)")
    return bundle_dir
