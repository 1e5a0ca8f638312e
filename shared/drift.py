"""Live drift: the features of served items, tested against the bundle's reference.

The export stage stores, per variant, the features of held-out data as the model saw it
(`drift.<variant>.npy`, rows x columns, listed and checksummed like every bundle file). A
service keeps the same features of its last `DRIFT_WINDOW` items and tests that window against
the reference every `DRIFT_CHECK_EVERY` items, off the request path, with scipy:
- `features`: a two-sample Kolmogorov-Smirnov test per column, Bonferroni-corrected (what Alibi
  Detect's KSDrift does; Alibi Detect itself pins numpy<2, Pillow<11 and transformers<5);
- `classes` (classifiers): a chi-square test of the window's predicted-class counts against the
  reference's (the prior shift a KS test on single columns can miss);
- `mmd`: a kernel two-sample test (MMD, permutation p-value; shared/mmd.py) on the rows as
  whole vectors (the embedding or the logits with the input statistics, standardized): a
  shift of the joint distribution that leaves every single column's marginal alone.
Text classifiers (`text-classifier/1`) have token statistics for inputs: length, the share of
distinct ids, the mean log id (byte-level BPE numbers its merges in order of frequency, so rare
words raise it) and the share of single-byte tokens (an unseen script falls apart into bytes).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from shared.bundle import Bundle
from shared.errors import BundleError
from shared.mmd import MMDTest

MIN_ITEMS = 30  # fewer items than this in the window: no test (its p-values mean little)
MIN_REFERENCE = 50
#: ids below this are the 4 special tokens and the 256 single bytes of the byte-level BPE
#: tokenizer training builds (training/text_data.py `train_tokenizer`)
BYTE_TOKENS = 260


def _moments(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = inputs.reshape(len(inputs), -1).astype(np.float64)
    return flat.mean(1), flat.std(1)


def classifier_features(inputs: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Rows of (input mean, input std, top-1 softmax score, logits...) of a batch; an item is
    one input (C, H, W) and its logits."""
    mean, std = _moments(inputs)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    confidence = 1.0 / shifted.sum(1)  # the top score: exp(0) over the sum
    return np.column_stack([mean, std, confidence, logits]).astype(np.float32)


def embedding_features(inputs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Rows of (input mean, input std, embedding norm, embedding...) of a batch; an item is a
    stack of images (n, C, H, W) and its embeddings (n, D)."""
    mean, std = _moments(inputs)
    norm = np.linalg.norm(embeddings.reshape(len(embeddings), -1), axis=1)
    return np.column_stack([mean, std, norm, embeddings]).astype(np.float32)


def text_features(inputs: list[list[int]], logits: np.ndarray) -> np.ndarray:
    """Rows of (tokens, distinct share, mean log id, byte share, top-1 score, logits...); an
    item is one text's token ids."""
    stats_of = []
    for ids in inputs:
        array = np.asarray(ids, dtype=np.float64)
        count = max(len(array), 1)
        distinct = len(np.unique(array)) / count
        stats_of.append((len(array), distinct, np.log1p(array).sum() / count,
                         (array < BYTE_TOKENS).sum() / count))  # fmt: skip
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    confidence = 1.0 / shifted.sum(1)
    return np.column_stack([np.array(stats_of), confidence, logits]).astype(np.float32)


@dataclass(frozen=True)
class FeatureSet:
    """How one kind of model's items become feature rows; `classes_from` is the first logit
    column for classifiers (the predicted class is the argmax from there), else None."""

    compute: Callable[[Any, np.ndarray], np.ndarray]
    head: tuple[str, ...]
    tail: str
    classes_from: int | None
    stacked: bool = False  # an item holds several inputs: concatenated, not stacked
    ragged: bool = False  # items of different lengths (token ids): handed over as a list

    def columns(self, width: int) -> list[str]:
        return [*self.head, *(f"{self.tail}_{i}" for i in range(width - len(self.head)))]


FEATURE_SETS = {
    "classifier/1": FeatureSet(
        classifier_features, ("input_mean", "input_std", "score"), "logit", 3
    ),
    "embedding/1": FeatureSet(
        embedding_features, ("input_mean", "input_std", "norm"), "dim", None, stacked=True
    ),
    "text-classifier/1": FeatureSet(
        text_features,
        ("tokens", "distinct_share", "mean_log_id", "byte_share", "score"),
        "logit",
        5,
        ragged=True,
    ),
}


def features_of(kind: str, items: list[Any], outputs: list[Any]) -> np.ndarray:
    """Feature rows of served (preprocessed item, output) pairs."""
    features = FEATURE_SETS[kind]
    join = np.concatenate if features.stacked else np.stack
    return features.compute(list(items) if features.ragged else join(items), join(outputs))


@dataclass(frozen=True)
class DriftReference:
    """What the model saw on held-out data: feature rows of one variant."""

    kind: str
    rows: np.ndarray
    source: str

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str) -> DriftReference | None:
        """The reference of `variant`, None when the bundle has none; a malformed one refuses
        the load (BundleError)."""
        entry = bundle.manifest.get("drift")
        if not entry or variant not in entry.get("files", {}):
            return None
        kind = entry.get("features")
        if kind not in FEATURE_SETS:
            raise BundleError(f"drift features {kind!r} unknown; known: {sorted(FEATURE_SETS)}")
        rows = bundle.load_array(entry["files"][variant])
        if rows.ndim != 2 or len(rows) < MIN_REFERENCE or not np.isfinite(rows).all():
            raise BundleError(
                f"drift reference of {variant!r} must be {MIN_REFERENCE}+ finite rows, "
                f"got shape {rows.shape}"
            )
        return cls(kind, rows.astype(np.float64), str(entry.get("source", "")))

    def classes(self, rows: np.ndarray) -> np.ndarray | None:
        start = FEATURE_SETS[self.kind].classes_from
        return None if start is None else rows[:, start:].argmax(1)


@dataclass(frozen=True)
class Verdict:
    """One two-sample test of the window against the reference."""

    statistic: float
    p_value: float
    drifted: bool
    detail: dict[str, Any]


class DriftMonitor:
    """A sliding window of feature rows and its tests against one reference (thread-safe)."""

    def __init__(
        self,
        reference: DriftReference,
        window: int,
        check_every: int,
        p_value: float,
        check_interval_s: float = 0.0,
    ):
        self.reference = reference
        self.columns = FEATURE_SETS[reference.kind].columns(reference.rows.shape[1])
        self.window: deque[np.ndarray] = deque(maxlen=window)
        #: served (item, output) pairs whose feature rows are computed only when a test or a
        #: report needs them: under load most items leave the window untested
        self._served: deque[tuple[Any, Any]] = deque(maxlen=window)
        self.check_every = check_every
        self.check_interval_s = check_interval_s
        self._due_since = -math.inf  # monotonic time of the last test handed out by due()
        self.threshold = p_value
        self.seen = 0
        self.last: dict[str, Verdict] = {}
        self.checked_at_items = 0
        self.checked_time: float | None = None
        #: called with each newest check's results under the lock (the observer's gauges), so
        #: the gauges and GET /v1/model/drift always show the same, latest test
        self.publish: Callable[[dict[str, Verdict]], None] | None = None
        self._due = 0
        self._lock = threading.Lock()
        ref_classes = reference.classes(reference.rows)
        width = reference.rows.shape[1] - (FEATURE_SETS[reference.kind].classes_from or 0)
        self._ref_counts = None if ref_classes is None else np.bincount(ref_classes, None, width)
        self._mmd = MMDTest(reference.rows, p_value)
        classes = () if self._ref_counts is None else ("classes",)
        self.tests = ("features", *classes, "mmd")

    def add(self, rows: np.ndarray) -> None:
        """Add feature rows (`due` tells when to test them)."""
        self._fits(rows)
        with self._lock:
            self._flush()  # the items served before these go first
            self.window.extend(rows)
            self.seen += len(rows)
            self._due += len(rows)

    def add_served(self, items: list[Any], outputs: list[Any]) -> None:
        """Add served items and their outputs. Their feature rows are computed when a test or
        a report needs them, and then only for the items still in the window: at 2,000
        requests a second and a test a second, a tenth of them (an item that is a stack of
        images, several rows, is computed at once)."""
        if FEATURE_SETS[self.reference.kind].stacked:
            self.add(features_of(self.reference.kind, items, outputs))
            return
        with self._lock:
            self._served.extend(zip(items, outputs, strict=True))
            self.seen += len(items)
            self._due += len(items)

    def _fits(self, rows: np.ndarray) -> None:
        if rows.shape[1] != len(self.columns):
            raise ValueError(
                f"{rows.shape[1]} feature columns; the reference has {len(self.columns)}"
            )

    def _flush(self) -> None:
        """The rows of the items served since the last flush, computed now (under the lock)."""
        if self._served:
            items, outputs = zip(*self._served, strict=True)
            self._served.clear()
            rows = features_of(self.reference.kind, list(items), list(outputs))
            self._fits(rows)
            self.window.extend(rows)

    @property
    def size(self) -> int:
        """Items in the window."""
        return min(self.window.maxlen or 0, len(self.window) + len(self._served))

    @property
    def pending(self) -> bool:
        """Enough new items for a test, which waits for `check_interval_s` to pass."""
        return self._due >= self.check_every and self.size >= MIN_ITEMS

    def due(self) -> bool:
        """True, once, when a test is due: `check_every` new items since the last one and at
        least `check_interval_s` since it. Under load, items alone would test many times a
        second (a test costs milliseconds of a core); the gauges are scraped every few
        seconds and the alert waits minutes."""
        with self._lock:
            now = time.monotonic()
            if not self.pending or now - self._due_since < self.check_interval_s:
                return False
            self._due, self._due_since = 0, now
            return True

    def check(self) -> dict[str, Verdict]:
        """Test the current window (nothing below MIN_ITEMS items); keeps and publishes the
        result unless a check of a later window finished first."""
        with self._lock:
            self._flush()
            rows = np.array(self.window, dtype=np.float64)
            seen = self.seen
        if len(rows) < MIN_ITEMS:
            return {}
        results = {"features": self._ks(rows)}
        if self._ref_counts is not None:
            results["classes"] = self._classes(rows)
        results["mmd"] = self._mmd_verdict(rows)
        with self._lock:
            if seen >= self.checked_at_items:
                self.last, self.checked_at_items, self.checked_time = results, seen, time.time()
                if self.publish is not None:
                    self.publish(results)
        return results

    def _ks(self, rows: np.ndarray) -> Verdict:
        found = stats.ks_2samp(self.reference.rows, rows, axis=0)
        p_values = np.nan_to_num(np.asarray(found.pvalue, dtype=np.float64), nan=1.0)
        worst = int(np.argmin(p_values))
        p_value = float(min(1.0, p_values[worst] * len(p_values)))  # Bonferroni
        statistic = float(np.nanmax(found.statistic))
        detail = {"column": self.columns[worst], "columns": len(self.columns)}
        return Verdict(statistic, p_value, p_value < self.threshold, detail)

    def _classes(self, rows: np.ndarray) -> Verdict:
        assert self._ref_counts is not None
        served = self.reference.classes(rows)
        counts = np.bincount(served, None, len(self._ref_counts))
        table = np.array([self._ref_counts, counts])
        table = table[:, table.sum(0) > 0]
        p_value = 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table).pvalue)
        ref_share = self._ref_counts / self._ref_counts.sum()
        share = counts / counts.sum()
        distance = float(0.5 * np.abs(ref_share - share).sum())  # total variation
        detail = {"window_counts": counts.tolist(), "reference_share": ref_share.round(4).tolist()}
        return Verdict(distance, p_value, p_value < self.threshold, detail)

    def _mmd_verdict(self, rows: np.ndarray) -> Verdict:
        found = self._mmd.test(rows)
        detail = {
            "columns": len(self.columns),
            "permutations": found.permutations,
            "bandwidth": round(self._mmd.bandwidth, 6),
        }
        return Verdict(found.statistic, found.p_value, found.p_value < self.threshold, detail)

    def report(self) -> dict[str, Any]:
        """GET /v1/model/drift for this model: the window, the last tests, the verdict."""
        with self._lock:
            last, checked, seen = self.last, self.checked_at_items, self.seen
            size, when = self.size, self.checked_time
        return {
            "features": self.reference.kind,
            "reference": {"items": len(self.reference.rows), "source": self.reference.source},
            "window": {"size": self.window.maxlen, "items": size},
            "items_seen": seen,
            "checked_at_items": checked,
            "p_value_threshold": self.threshold,
            "drifted": any(result.drifted for result in last.values()),
            "tests": {
                name: {
                    "statistic": result.statistic,
                    "p_value": result.p_value,
                    "drifted": result.drifted,
                    **result.detail,
                }
                for name, result in last.items()
            },
            "checked_time": when,
        }
