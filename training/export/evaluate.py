"""Per-variant figures on the held-out data: accuracy, agreement, size, latency and throughput."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.export.onnx import Runner, onnx_logits

THROUGHPUT_BATCH = 32


@dataclass(frozen=True)
class Timing:
    """How many timed runs per variant (batch-1 latency, batch-32 throughput), in how many
    interleaved rounds."""

    latency_runs: int = 200
    throughput_runs: int = 20
    rounds: int = 5


@dataclass
class Figures:
    """Everything the report and the manifest say about one variant."""

    name: str
    file: str
    accuracy: float
    macro_f1: float
    agreement_fp32: float
    size_bytes: int
    params: int
    flops: int
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    throughput_ips: float = 0.0
    max_abs_diff_torch: float | None = None
    in_bundle: bool = False
    kind: str = "variant"  # "study" or "torch": reported, never bundled
    gate: str = ""  # why it failed a gate; empty when it passed
    details: dict[str, Any] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        """The figures a manifest entry carries (file and sha256 are added by the writer)."""
        keep = asdict(self)
        for key in ("name", "in_bundle", "kind", "gate", "details"):
            keep.pop(key)
        return {**keep, **self.details}


def macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(
        f1_score(labels, predicted, labels=list(range(classes)), average="macro", zero_division=0)
    )


def time_runs(model: Runner, batch: np.ndarray, runs: int) -> list[float]:
    """Seconds per `model.run` on `batch`, one untimed warm-up run first."""
    model.run({"input": batch})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run({"input": batch})
        times.append(time.perf_counter() - started)
    return times


def quality(
    model: Runner, inputs: np.ndarray, labels: np.ndarray, reference_top1: np.ndarray | None
) -> tuple[dict[str, float], np.ndarray]:
    """(accuracy, macro F1, agreement with the fp32 top-1) and the held-out logits."""
    logits = onnx_logits(model, inputs)
    predicted = logits.argmax(1)
    agreement = 1.0 if reference_top1 is None else float(np.mean(predicted == reference_top1))
    return (
        {
            "accuracy": float(np.mean(predicted == labels)),
            "macro_f1": macro_f1(labels, predicted, logits.shape[1]),
            "agreement_fp32": agreement,
        },
        logits,
    )


def timings(
    models: dict[str, Runner], inputs: np.ndarray, timing: Timing
) -> dict[str, dict[str, float]]:
    """Batch-1 latency p50/p99 and batch-32 throughput of every model, interleaved.

    The runs are spread over `timing.rounds` round-robin passes, so a burst of load from other
    processes on a shared machine hits every variant alike instead of whichever ran then.
    """
    one = inputs[:1]
    batch = np.resize(inputs, (THROUGHPUT_BATCH, *inputs.shape[1:]))
    single: dict[str, list[float]] = {name: [] for name in models}
    batched: dict[str, list[float]] = {name: [] for name in models}
    rounds = max(1, timing.rounds)
    for _ in range(rounds):
        for name, model in models.items():
            single[name] += time_runs(model, one, max(1, timing.latency_runs // rounds))
            batched[name] += time_runs(model, batch, max(1, timing.throughput_runs // rounds))
    return {
        name: {
            "latency_ms_p50": float(np.percentile(single[name], 50) * 1000),
            "latency_ms_p99": float(np.percentile(single[name], 99) * 1000),
            "throughput_ips": float(THROUGHPUT_BATCH / np.median(batched[name])),
        }
        for name in models
    }
