"""Every Prometheus metric family a service exports, on a registry owned by one app.

With several processes on one port (SERVER_PROCESSES, shared/supervisor.py) every process
writes its values to PROMETHEUS_MULTIPROC_DIR and a scrape of any of them (or of the
supervisor's METRICS_PORT) reads them all: counters and histograms add up over the
processes, live gauges by the mode each declares (ready: the least, queue depth: the sum,
model info: the most)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets from 1 ms to 10 s: single-image ONNX inference sits in the low milliseconds,
# diffusion and explanations in seconds.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,  # explain and generate requests may take this long (their timeouts are 60 and 120 s)
    60.0,
    120.0,
)


class Metrics:
    """The metric families of one app, labelled by service and route template."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        #: what /metrics exposes: this registry, or every process's values (multiprocess)
        self.scrape = scrape_registry(self.registry)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "modelplane_requests_total",
            "HTTP requests handled, by route template, method and status code.",
            ["service", "route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "modelplane_request_duration_seconds",
            "HTTP request latency from first byte in to response start.",
            ["service", "route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "modelplane_inference_duration_seconds",
            "Time spent in the model's predict() per batch.",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "modelplane_stage_duration_seconds",
            "Time a request spent in each stage (preprocess, queue, predict, postprocess), by "
            "route template; predict is its batch's run for batched routes.",
            ["service", "route", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "modelplane_model_info",
            "The models being served (value 1 for each active one).",
            ["service", "name", "version", "variant"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self._served: dict[str, tuple[str, str, str]] = {}  # model key -> its label values
        self.model_load_seconds = Gauge(
            "modelplane_model_load_seconds",
            "Seconds the last successful model load took (fetch, verify, load, warm up).",
            ["service"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.model_load_failures = Counter(
            "modelplane_model_load_failures_total",
            "Model loads that failed.",
            ["service"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelplane_batch_size",
            "Items per predict() call made by the dynamic batcher.",
            ["service"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "modelplane_queue_wait_seconds",
            "Time a request waited in the batch queue before its batch started.",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "modelplane_queue_depth",
            "Requests waiting in the batch queue.",
            ["service"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.rejections = Counter(
            "modelplane_rejections_total",
            "Requests refused before inference, by reason (queue_full, deadline, in_flight, "
            "rate_limit).",
            ["service", "reason"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "modelplane_ready",
            "1 when the service is ready to serve, else 0.",
            ["service"],
            multiprocess_mode="livemin",
            registry=self.registry,
        )
        self.drift_statistic = Gauge(
            "modelplane_drift_statistic",
            "Last drift test of the window against the bundle's reference: largest KS distance "
            "(test=features), total variation of predicted classes (test=classes) or MMD² of "
            "the feature rows (test=mmd).",
            ["service", "model", "test"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.drift_p_value = Gauge(
            "modelplane_drift_p_value",
            "p-value of the last drift test (features: Bonferroni-corrected over the columns; "
            "mmd: by permutation).",
            ["service", "model", "test"],
            multiprocess_mode="livemin",
            registry=self.registry,
        )
        self.drift_detected = Gauge(
            "modelplane_drift_detected",
            "1 when the last drift test fell below DRIFT_P_VALUE, else 0.",
            ["service", "model", "test"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.drift_window_items = Gauge(
            "modelplane_drift_window_items",
            "Items in the sliding drift window.",
            ["service", "model"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.prediction_log_records = Counter(
            "modelplane_prediction_log_records_total",
            "Prediction-log records the sink accepted.",
            ["service"],
            registry=self.registry,
        )
        self.prediction_log_dropped = Counter(
            "modelplane_prediction_log_dropped_total",
            "Observations or records dropped, never waited for, by reason (observer_behind, "
            "sink_behind, sink_error).",
            ["service", "reason"],
            registry=self.registry,
        )
        # per version and role (production, challenger = canary answers, shadow = challenger
        # runs whose answers are only compared): what a rollout gate reads (docs/rollouts.md)
        self.model_requests = Counter(
            "modelplane_model_requests_total",
            "Requests a model version ran (batched: queue and predict; direct: the call), by "
            "role and outcome (ok, error).",
            ["service", "model", "version", "role", "outcome"],
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "modelplane_model_latency_seconds",
            "Time a model version took for a request (queue and predict, or the direct call).",
            ["service", "model", "version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_agreement = Histogram(
            "modelplane_shadow_agreement",
            "Agreement of a shadowed challenger answer with production's, 0 to 1 (the service "
            "declares what it compares: top-1, cosine, first tokens, pixels).",
            ["service", "model", "version"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0),
            registry=self.registry,
        )
        self.shadows = Counter(
            "modelplane_shadow_requests_total",
            "Shadow runs on the challenger by outcome (compared, error, shed).",
            ["service", "model", "outcome"],
            registry=self.registry,
        )
        self.ready.labels(service).set(0)
        self.prediction_log_records.labels(service)
        for reason in ("observer_behind", "sink_behind", "sink_error"):
            self.prediction_log_dropped.labels(service, reason)
        self.model_load_failures.labels(service)
        self.queue_depth.labels(service).set(0)
        for reason in ("queue_full", "deadline", "in_flight", "rate_limit"):
            self.rejections.labels(service, reason)

    def child(self, family: Any, *labels: str) -> Any:
        """`family.labels(*labels)`, looked up once: labels() validates and locks on every
        call, a few microseconds each on the event loop."""
        key = (id(family), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def set_model(self, key: str, name: str, version: str, variant: str) -> None:
        """Model `key` now serves name/version/variant (its previous sample is removed)."""
        if (previous := self._served.get(key)) is not None:
            if multiprocess_dir() is None:
                self.model_info.remove(self.service, *previous)
            else:  # a file per process cannot drop a sample: 0 is left out of scrapes
                self.model_info.labels(self.service, *previous).set(0)
        self._served[key] = (name, version, variant)
        self.model_info.labels(self.service, name, version, variant).set(1)


def multiprocess_dir() -> str | None:
    """The directory every process of one instance writes its metric values to, if any."""
    return os.environ.get(MULTIPROC_ENV) or None


class AllProcesses(Collector):
    """The values every process wrote to `directory`, less the model-info samples a process
    set to 0 on a model swap (single-process, the sample is removed)."""

    def __init__(self, directory: str) -> None:
        self.collector = MultiProcessCollector(None, directory)

    def collect(self) -> Iterator[Metric]:
        for family in self.collector.collect():
            if family.name == "modelplane_model_info":
                family.samples = [sample for sample in family.samples if sample.value > 0]
            yield family


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """`registry`, or in multiprocess mode one that reads every process's values."""
    directory = multiprocess_dir()
    if directory is None:
        return registry
    aggregated = CollectorRegistry(auto_describe=False)
    aggregated.register(AllProcesses(directory))
    return aggregated
