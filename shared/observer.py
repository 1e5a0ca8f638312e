"""What the runtime hands over after each request: drift and the prediction log.

`Runtime.submit` (the path every protocol's batched request takes: task routes, V2, gRPC)
gives the observer the items, outputs and latency of a request with one non-blocking queue put.
The observer's thread turns them into drift feature rows (tested every DRIFT_CHECK_EVERY
items, gauges updated) and, for the sampled share of requests, a prediction-log record.
Direct and streaming calls (`Runtime.observe_call`, from the task route once the answer is
there) have no drift reference: the sampled share of them is logged, one item per call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.drift import DriftMonitor, DriftReference, Verdict
from shared.metrics import Metrics
from shared.predlog import CloudEventsSink, JsonlSink, PredictionLog, Sink, record, summarize_input
from shared.settings import ServingSettings
from shared.supervisor import is_worker, worker_index

if TYPE_CHECKING:
    from shared.slots import LoadedModel

log = logging.getLogger("modelplane.observer")

TAKE_AT_ONCE = 256  # observations handled together when they queue up


@dataclass(frozen=True)
class Observation:
    """One answered request as the observer sees it."""

    key: str
    model: Any  # the ModelService that answered
    info: dict[str, str]
    monitor: DriftMonitor | None
    endpoint: str
    request_id: str | None
    items: list[Any]
    outputs: list[Any]
    latency_s: float
    when: float
    call: bool = False  # a direct or streaming call: already sampled, summarized per call


class Observer:
    """A bounded queue and one thread: drift windows, gauges, sampled log records."""

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.service = metrics.service
        self.rate = settings.prediction_log_rate
        self.log = _prediction_log(settings, metrics) if self.rate > 0 else None
        self.random = random.Random()
        self.queue: queue.Queue[Observation | None] = queue.Queue(settings.prediction_log_queue)
        self.thread: threading.Thread | None = None
        #: monitors with new items not yet tested (the observer thread's own)
        self.held: dict[int, DriftMonitor] = {}
        self.closed = False
        self._starting = threading.Lock()

    def monitor(self, bundle: Any, variant: str) -> DriftMonitor | None:
        """The drift monitor of a model being loaded (None: no reference, or drift off)."""
        if not self.settings.drift_enabled:
            return None
        reference = DriftReference.from_bundle(bundle, variant)
        if reference is None:
            return None
        settings = self.settings
        return DriftMonitor(
            reference,
            settings.drift_window,
            settings.drift_check_every,
            settings.drift_p_value,
            settings.drift_check_interval_s,
        )

    def activate(self, key: str, monitor: DriftMonitor | None) -> None:
        """A model went live: its gauges start from an empty window."""
        if monitor is None:
            return
        self.metrics.drift_window_items.labels(self.service, key).set(0)
        for test in monitor.tests:
            self.metrics.drift_detected.labels(self.service, key, test).set(0)
            self.metrics.drift_p_value.labels(self.service, key, test).set(math.nan)
            self.metrics.drift_statistic.labels(self.service, key, test).set(math.nan)
        monitor.publish = functools.partial(self._gauges, key)

    def wanted(self, monitor: DriftMonitor | None) -> bool:
        return monitor is not None or self.log is not None

    def observe(self, observation: Observation) -> None:
        """Hand one request over without waiting; dropped (counted) when the thread is behind."""
        if self.thread is None:
            with self._starting:  # protocols may call from several threads
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="observer", daemon=True)
                    self.thread.start()
        try:
            self.queue.put_nowait(observation)
        except queue.Full:
            self.metrics.prediction_log_dropped.labels(self.service, "observer_behind").inc()

    def observe_call(
        self,
        loaded: LoadedModel,
        endpoint: str,
        request_id: str | None,
        work: Any,
        output: Any,
        latency_s: float,
    ) -> None:
        """A direct or streaming call's answer, sampled here (its output may be large: images),
        then handed over like a batched request. A call without input (a GET of facts such as
        the schedulers or the filters) is no prediction: not logged."""
        if self.log is None or work is None or self.random.random() >= self.rate:
            return
        info = loaded.info()
        when = time.time()
        self.observe(
            Observation(
                loaded.key, loaded.model, info, None, endpoint, request_id, [work], [output],
                latency_s, when, call=True,
            )
        )  # fmt: skip

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._drift(batch)
                for observation in batch:
                    if self.log is not None and (
                        observation.call or self.random.random() < self.rate
                    ):
                        self._log(self.log, observation)
            except Exception:  # observing never stops serving
                log.exception("observing %d requests failed", len(batch))

    def _take(self) -> list[Observation] | None:
        """The next observation and those already waiting behind it (None: closed; empty: a
        held test's time came with nothing queued), so that under load they are handled per
        batch, not per request."""
        if self.closed:
            return None
        try:  # a test held back by DRIFT_CHECK_INTERVAL_S runs when its time comes, traffic or not
            first = self.queue.get(
                timeout=self.settings.drift_check_interval_s if self.held else None
            )
        except queue.Empty:
            return []
        if first is None:
            return None
        batch = [first]
        while len(batch) < TAKE_AT_ONCE and not self.queue.empty():
            if (observation := self.queue.get_nowait()) is None:
                self.closed = True
                break
            batch.append(observation)
        return batch

    def _drift(self, batch: list[Observation]) -> None:
        groups: dict[int, tuple[str, DriftMonitor, list[Any], list[Any]]] = {}
        for observation in batch:
            if observation.monitor is not None:
                group = (observation.key, observation.monitor, [], [])
                _, _, items, outputs = groups.setdefault(id(observation.monitor), group)
                items.extend(observation.items)
                outputs.extend(observation.outputs)
        for key, monitor, items, outputs in groups.values():
            monitor.add_served(items, outputs)
            self.metrics.drift_window_items.labels(self.service, key).set(monitor.size)
            self.held[id(monitor)] = monitor
        for held in list(self.held.values()):
            if held.due():
                held.check()  # published to the gauges (activate)
            if not held.pending:
                del self.held[id(held)]

    def _gauges(self, key: str, results: dict[str, Verdict]) -> None:
        for test, result in results.items():
            self.metrics.drift_statistic.labels(self.service, key, test).set(result.statistic)
            self.metrics.drift_p_value.labels(self.service, key, test).set(result.p_value)
            self.metrics.drift_detected.labels(self.service, key, test).set(int(result.drifted))

    def _log(self, predictions: PredictionLog, observation: Observation) -> None:
        if predictions.behind():  # dropped anyway: not worth summarizing
            self.metrics.prediction_log_dropped.labels(self.service, "sink_behind").inc()
        else:
            predictions.submit(self._record(observation))

    def _record(self, observation: Observation) -> dict[str, Any]:
        raw = self.settings.prediction_log_inputs
        model = observation.model
        pairs = zip(observation.items, observation.outputs, strict=True)
        if observation.call:
            items = [model.summarize_call(work, output) for work, output in pairs]
        else:
            items = [
                {"input": summarize_input(item, raw), "output": model.summarize(output)}
                for item, output in pairs
            ]
        return record(
            observation.request_id,
            observation.endpoint,
            observation.info,
            observation.latency_s,
            items,
            observation.when,
        )

    def close(self) -> None:
        if self.thread is not None:
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=1)
            self.thread.join(2)
        if self.log is not None:
            self.log.close()


def _prediction_log(settings: ServingSettings, metrics: Metrics) -> PredictionLog:
    sink: Sink
    if settings.prediction_log_url:
        sink = CloudEventsSink(
            settings.prediction_log_url, metrics.service, settings.prediction_log_timeout_s
        )
    else:
        # several processes on one port (shared/supervisor.py) each rotate a file of their own
        name = f"{metrics.service}-{worker_index()}" if is_worker() else metrics.service
        path = settings.prediction_log_dir / f"{name}.jsonl"
        sink = JsonlSink(path, settings.prediction_log_max_bytes, settings.prediction_log_backups)
    log.info(
        "prediction log: %.0f%% of requests to %s",
        settings.prediction_log_rate * 100,
        settings.prediction_log_url or settings.prediction_log_dir,
    )
    return PredictionLog(sink, settings.prediction_log_queue, metrics)
