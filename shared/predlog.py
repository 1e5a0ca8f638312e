"""The prediction log: a sampled record of served requests, written off the request path.

A record holds the time, request id, endpoint, model, latency, and per item a hash and a
compact summary of the model's input (shape, mean, std; the tensor itself only with
PREDICTION_LOG_INPUTS) and of its output (top-1 and score, embedding norm). Direct and
streaming calls (explain, generate, text generation) are one item each, summarized by the
model's `summarize_call` (method and target, image size, generated tokens). Records go to a
rotating JSONL file, or as CloudEvents (binary mode, KServe's inference-logger event type) to
PREDICTION_LOG_URL. The sink runs on its own thread behind a bounded queue: a slow or dead sink
never slows or fails a request; its records are dropped and counted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import threading
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.metrics import Metrics

log = logging.getLogger("modelplane.predlog")

EVENT_TYPE = "org.kubeflow.serving.inference.response"  # what KServe's logger sends


def summarize_input(item: Any, raw: bool = False) -> dict[str, Any]:
    """sha256 and a compact summary of one model input; its data only when `raw`."""
    if isinstance(item, np.ndarray):
        data = np.ascontiguousarray(item).tobytes()
        summary: dict[str, Any] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "shape": list(item.shape),
            "dtype": str(item.dtype),
            "mean": round(float(item.mean()), 6) if item.size else None,
            "std": round(float(item.std()), 6) if item.size else None,
        }
        if raw:
            summary["data_base64"] = base64.b64encode(data).decode()
        return summary
    if isinstance(item, bytes | str):
        data = item.encode() if isinstance(item, str) else item
        summary = {"sha256": hashlib.sha256(data).hexdigest(), "length": len(item)}
        if raw:
            summary["data_base64"] = base64.b64encode(data).decode()
        return summary
    if isinstance(item, list | tuple) and all(isinstance(i, int) for i in item):
        return summarize_tokens(item)
    return {"type": type(item).__name__}


def summarize_tokens(ids: list[int] | tuple[int, ...]) -> dict[str, Any]:
    """Token ids: their sha256 (of the ids as int64) and how many; never the ids."""
    data = np.asarray(ids, dtype=np.int64).tobytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "tokens": len(ids)}


def summarize_output(output: Any) -> dict[str, Any]:
    """A compact summary of one model output: shape and norm of a tensor, size and hash of
    bytes (a PNG), the fields of an answer."""
    if isinstance(output, np.ndarray):
        return {"shape": list(output.shape), "norm": round(float(np.linalg.norm(output)), 6)}
    if isinstance(output, bytes):
        return {"bytes": len(output), "sha256": hashlib.sha256(output).hexdigest()}
    if isinstance(output, dict):
        return {"fields": sorted(output)}
    return {"type": type(output).__name__}


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """One JSON line per record; past `max_bytes` the file rotates to `.1` ... `.<backups>`."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.file.flush()
        if self.file.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self.file.close()
        for index in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            newer = self.path.with_name(f"{self.path.name}.{index - 1}") if index > 1 else self.path
            if index == self.backups:
                older.unlink(missing_ok=True)
            if newer.exists():
                newer.replace(older)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self.file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self.file.close()


class CloudEventsSink:
    """POST each record as a binary-mode CloudEvent 1.0, as KServe's payload logger does."""

    def __init__(self, url: str, service: str, timeout_s: float) -> None:
        self.url = url
        self.service = service
        self.timeout_s = timeout_s

    def write(self, record: dict[str, Any]) -> None:
        headers = {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": str(record["request_id"]),
            "ce-source": f"modelplane/{self.service}",
            "ce-type": EVENT_TYPE,
            "ce-time": record["time"],
            "ce-inferenceservicename": record["model"]["name"],
            "ce-component": self.service,
            "ce-endpoint": record["endpoint"],
        }
        body = json.dumps(record, separators=(",", ":")).encode()
        request = urllib.request.Request(self.url, body, headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
            answer.read()

    def close(self) -> None:
        pass


class PredictionLog:
    """A bounded queue and one writer thread in front of a sink; drops are counted."""

    def __init__(self, sink: Sink, capacity: int, metrics: Metrics) -> None:
        self.sink = sink
        self.metrics = metrics
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=capacity)
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self.thread.start()

    def behind(self) -> bool:
        """The queue is full: the next record would be dropped (callers skip building it)."""
        return self.queue.full()

    def submit(self, record: dict[str, Any]) -> None:
        """Queue a record, or drop it (counted) when the sink is behind."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.metrics.prediction_log_dropped.labels(self.metrics.service, "sink_behind").inc()

    def _run(self) -> None:
        while (record := self.queue.get()) is not None:
            try:
                self.sink.write(record)
            except Exception as exc:  # noqa: BLE001 - a failing sink never stops serving
                self.metrics.prediction_log_dropped.labels(self.metrics.service, "sink_error").inc()
                log.warning("prediction log sink failed, record dropped: %s", exc)
            else:
                self.metrics.prediction_log_records.labels(self.metrics.service).inc()

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop."""
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self.thread.join(timeout_s)
        self.sink.close()


def record(
    request_id: str | None,
    endpoint: str,
    model: dict[str, str],
    latency_s: float,
    items: list[dict[str, Any]],
    when: float,
) -> dict[str, Any]:
    """One prediction-log record (its JSON form is the documented format)."""
    return {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "endpoint": endpoint,
        "model": model,
        "latency_ms": round(latency_s * 1000, 3),
        "items": items,
    }
