"""The MMD two-sample test (shared/mmd.py) on vectors whose distributions are known: quiet on
samples of the reference's distribution, alarmed by a shift, and by a change of the joint
distribution that leaves every marginal alone (what per-column KS tests cannot see)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from shared.mmd import BLOCK, MMDTest

THRESHOLD = 0.001


def correlated(rng: np.random.Generator, count: int, width: int = 8) -> np.ndarray:
    """`width` coordinates, each N(0, 1); the first two almost equal."""
    rows = rng.normal(size=(count, width))
    rows[:, 1] = 0.95 * rows[:, 0] + np.sqrt(1 - 0.95**2) * rows[:, 1]
    return rows


def test_samples_of_the_reference_distribution_rarely_alarm() -> None:
    rng = np.random.default_rng(0)
    test = MMDTest(correlated(rng, 400), THRESHOLD)
    results = [test.test(correlated(rng, 100)) for _ in range(100)]
    alarms = sum(result.p_value < THRESHOLD for result in results)
    assert alarms <= 2
    # a clean window stops after one block of permutations: it cannot get below the threshold
    assert np.median([result.permutations for result in results]) == BLOCK


def test_a_shift_of_the_mean_alarms_with_every_permutation_beaten() -> None:
    rng = np.random.default_rng(1)
    test = MMDTest(correlated(rng, 400), THRESHOLD)
    result = test.test(correlated(rng, 100) + 0.5)
    assert result.p_value < THRESHOLD
    assert result.permutations == test.max_permutations >= 2 / THRESHOLD
    assert result.p_value == 1 / (1 + test.max_permutations)


def test_a_joint_shift_with_unchanged_marginals_alarms_where_ks_does_not() -> None:
    rng = np.random.default_rng(2)
    reference = correlated(rng, 400, width=2)
    window = correlated(rng, 100, width=2)
    window[:, 1] = rng.permutation(window[:, 1])  # same marginals, the correlation gone
    ks = stats.ks_2samp(reference, window, axis=0).pvalue.min() * reference.shape[1]
    assert ks > THRESHOLD  # Bonferroni-corrected KS sees nothing
    assert MMDTest(reference, THRESHOLD).test(window).p_value < THRESHOLD


def test_the_same_window_gets_the_same_answer() -> None:
    rng = np.random.default_rng(3)
    test = MMDTest(correlated(rng, 600), THRESHOLD)  # subsampled to MAX_REFERENCE, seeded
    window = correlated(rng, 100)
    assert test.test(window) == test.test(window)
    assert len(test.reference) == 400
