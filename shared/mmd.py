"""A kernel two-sample test on whole vectors: maximum mean discrepancy with a permutation test.

Per-column KS tests miss a shift that moves the joint distribution of an embedding (or of the
logits) while leaving each coordinate's marginal alone; MMD compares the two samples as sets of
vectors. This is the test Alibi Detect's `MMDDrift` runs (Gaussian kernel, bandwidth from the
median heuristic, p-value by permutation), written on numpy alone: Alibi Detect needs TensorFlow
or PyTorch as its backend (the serving install has neither) and pins numpy<2; `hyppo` pulls
numba and autograd. One kernel matrix per check; every permutation is a weighted sum over it,
computed a block of permutations at a time as one matrix product, and the test stops as soon
as the p-value can no longer fall below the threshold (a clean window costs one block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_REFERENCE = 400  # reference vectors kept (a seeded subsample): bounds each check's cost
BLOCK = 250  # permutations per matrix product
MIN_PERMUTATIONS = 1000
MAX_PERMUTATIONS = 10_000  # resolves p-values down to 1e-4; a stricter threshold never alarms


@dataclass(frozen=True)
class MMDResult:
    """The window's MMD² against the reference, its permutation p-value, and the work done."""

    statistic: float
    p_value: float
    permutations: int


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms_a = (a * a).sum(1)[:, None]
    norms_b = (b * b).sum(1)[None, :]
    return np.maximum(norms_a + norms_b - 2.0 * a @ b.T, 0.0)


class MMDTest:
    """MMD² (biased estimate, Gaussian kernel) of windows against one fixed reference sample.

    Coordinates are standardized by the reference's mean and spread (one bandwidth then suits
    every coordinate: logits of a confident class would otherwise drown the rest), and the
    bandwidth is the median distance between reference vectors, fixed once, so every window is
    measured with the same kernel. `threshold` sets how many permutations a check may need:
    enough that a p-value below it can be resolved (2 / threshold, from 1,000 to 10,000)."""

    def __init__(self, reference: np.ndarray, threshold: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        reference = np.asarray(reference, dtype=np.float64)
        self.center = reference.mean(0)
        spread = reference.std(0)
        self.scale = np.where(spread > 1e-12, spread, 1.0)  # a constant coordinate stays put
        if len(reference) > MAX_REFERENCE:
            reference = reference[np.sort(rng.choice(len(reference), MAX_REFERENCE, False))]
        self.reference = self._standard(reference)
        distances = _squared_distances(self.reference, self.reference)
        off_diagonal = distances[~np.eye(len(distances), dtype=bool)]
        median = float(np.median(off_diagonal)) if off_diagonal.size else 1.0
        self.bandwidth = math.sqrt(median) if median > 0 else 1.0
        self.threshold = threshold
        wanted = math.ceil(2 / threshold)
        self.max_permutations = min(MAX_PERMUTATIONS, max(MIN_PERMUTATIONS, wanted))
        self.seed = seed

    def _standard(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(rows, dtype=np.float64) - self.center) / self.scale

    def test(self, window: np.ndarray) -> MMDResult:
        """MMD² of `window` (rows of the reference's width) and its permutation p-value."""
        pooled = np.concatenate([self.reference, self._standard(window)])
        kernel = np.exp(-_squared_distances(pooled, pooled) / (2 * self.bandwidth**2))
        m, n = len(self.reference), len(window)
        weights = np.concatenate([np.full(m, 1.0 / m), np.full(n, -1.0 / n)])
        observed = float(weights @ kernel @ weights)
        rng = np.random.default_rng(self.seed)  # the same permutations for every window
        done = exceeded = 0
        while done < self.max_permutations:
            size = min(BLOCK, self.max_permutations - done)
            shuffled = weights[rng.permuted(np.tile(np.arange(m + n), (size, 1)), axis=1)].T
            null = np.einsum("ip,ip->p", shuffled, kernel @ shuffled)
            exceeded += int((null >= observed - 1e-12).sum())
            done += size
            if (1 + exceeded) / (1 + self.max_permutations) >= self.threshold:
                break  # it cannot end below the threshold any more: no need to go on
        return MMDResult(observed, (1 + exceeded) / (1 + done), done)
