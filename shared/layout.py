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


#: the most processes the default layout starts: each one holds its own copy of the models
#: (RSS x N) and loads them at start-up (cold start about +1 s each on 2 cores)
MAX_DEFAULT_PROCESSES = 4
#: threads of all processes together per core in the default layout. One: under load every
#: core runs one onnxruntime thread, and no parallel-for waits for a thread that a sibling
#: process preempted. Two (a lone batch gets two cores while its sibling idles) kept
#: concurrency 1 faster for a heavy model, but lost at concurrency 32 (docs/performance.md)
THREADS_PER_CORE = 1


@dataclass(frozen=True)
class Layout:
    """How a service instance spends its CPU budget on batched ONNX models."""

    cores: int  # the budget (cpu_budget)
    processes: int  # service processes sharing the port (SO_REUSEPORT, shared/supervisor.py)
    intra_op_threads: int  # onnxruntime threads per batch, in each process
    inference_workers: int  # batches running at once, in each process
    chosen_by: str  # "settings" where any part was set explicitly, else "default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_layout(
    cores: int, processes: int = 0, intra_op_threads: int = 0, inference_workers: int = 0
) -> Layout:
    """The layout for `cores`; a non-zero argument is an explicit setting and wins.

    Default: one process per core (at most MAX_DEFAULT_PROCESSES), one batch in flight in
    each, and THREADS_PER_CORE x cores intra-op threads shared out between the processes and
    their batches (never more than `cores` per batch). On 2 cores: 2 processes x 1 thread.
    Measured with `make bench-serve` (docs/performance.md): against one process x 2 threads,
    two processes serve more at concurrency 32 because one process's Python (HTTP, decoding,
    batching) runs while the other's batch is in onnxruntime; against 2 processes x 2 threads,
    1 thread each serves more at concurrency 32 (no oversubscribed parallel-for) and costs a
    heavy model (fp32) a fifth of its concurrency-1 throughput; one process
    (SERVER_PROCESSES=1, every core as intra-op threads) is the layout for that case."""
    explicit = bool(processes or intra_op_threads or inference_workers)
    processes = processes or max(1, min(cores, MAX_DEFAULT_PROCESSES))
    workers = inference_workers or 1
    share = max(1, min(cores, THREADS_PER_CORE * cores // processes) if processes > 1 else cores)
    threads = intra_op_threads or max(1, share // workers)
    return Layout(cores, processes, threads, workers, "settings" if explicit else "default")


def laid_out(service: type[Service] | Service) -> bool:
    """Whether the layout applies: every model a tensor (ONNX) model, behind batched endpoints.
    Other services (PyTorch replicas, pipelines) keep their settings and one process."""
    from shared.service import Lane

    batched = any(e.lane is Lane.BATCHED for e in service.endpoints)
    return batched and all(spec.tensor for spec in service.models)


def service_layout(service: type[Service] | Service, settings: ServingSettings) -> Layout:
    """The layout of `service` under `settings` (explicit settings win); a service the layout
    does not apply to, or that keeps state in each process, runs one process."""
    explicit = settings.model_fields_set
    processes = settings.server_processes
    if not processes and (service.single_process or not laid_out(service)):
        processes = 1
    return choose_layout(
        cpu_budget(),
        processes,
        settings.onnx_intra_op_threads,
        settings.inference_workers if "inference_workers" in explicit else 0,
    )


def with_layout(service: Service, settings: ServingSettings) -> ServingSettings:
    """`settings` with the layout's processes, threads and workers filled in for a service the
    layout applies to (`laid_out`); others get their process count only."""
    layout = service_layout(service, settings)
    update: dict[str, Any] = {"server_processes": layout.processes}
    if laid_out(service):
        update["onnx_intra_op_threads"] = layout.intra_op_threads
        update["inference_workers"] = layout.inference_workers
    return settings.model_copy(update=update)
