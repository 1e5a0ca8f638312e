"""The CPU budget of a service process and the thread layout chosen from it.

The budget is the smaller of the CPUs the process may run on (affinity) and its cgroup CPU
quota, rounded up (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`): a
container limited to 2 CPUs on a 64-core node gets 2, not 64, so onnxruntime does not start
64 threads that the quota then throttles.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.service import Service
    from shared.settings import ServingSettings

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup CPU quota in CPUs (1.5 = one and a half), None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cpu_budget(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process can use: affinity, capped by the cgroup quota (rounded up)."""
    cores = affinity_cores()
    quota = cgroup_quota(root)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


@dataclass(frozen=True)
class Layout:
    """How a service process spends its CPU budget on a batched ONNX model."""

    cores: int  # the budget (cpu_budget)
    intra_op_threads: int  # onnxruntime threads per batch
    inference_workers: int  # batches running at once
    chosen_by: str  # "settings" where any part was set explicitly, else "default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_layout(cores: int, intra_op_threads: int = 0, inference_workers: int = 0) -> Layout:
    """The layout for `cores`; a non-zero argument is an explicit setting and wins, and the
    cores are split between the batches in flight (INFERENCE_WORKERS=2 alone on 4 cores: two
    batches of 2 threads each, not 2 x 4 threads that oversubscribe the cores).

    Default: one batch in flight with every core as intra-op threads. Measured with `make
    bench-serve` on 2 cores (docs/performance.md) against one thread x two batches in flight
    and against two processes x one thread on one port (REUSE_PORT): two batches in one
    process were no reliable gain (0.79-1.6x, int8 lost at concurrency 8 and 32 in the last
    run); two processes were the fastest at concurrency 32 in three of four runs (up to
    2.0x), but a second process is not yet a default the runtime can keep every guarantee
    for (metrics, per-process state), so it stays the operator's choice."""
    explicit = bool(intra_op_threads or inference_workers)
    workers = inference_workers or 1
    threads = intra_op_threads or max(1, cores // workers)
    return Layout(cores, threads, workers, "settings" if explicit else "default")


def with_layout(service: Service, settings: ServingSettings) -> ServingSettings:
    """`settings` with the layout's threads and workers filled in, for a service whose models
    are all tensor (ONNX) models behind batched endpoints; other services (PyTorch replicas,
    pipelines) keep their settings as they are. Explicit settings always win."""
    from shared.service import Lane

    batched = any(e.lane is Lane.BATCHED for e in service.endpoints)
    if not batched or not all(spec.tensor for spec in service.models):
        return settings
    explicit = settings.model_fields_set
    layout = choose_layout(
        cpu_budget(),
        settings.onnx_intra_op_threads,
        settings.inference_workers if "inference_workers" in explicit else 0,
    )
    update = {
        "onnx_intra_op_threads": layout.intra_op_threads,
        "inference_workers": layout.inference_workers,
    }
    return settings.model_copy(update=update)
