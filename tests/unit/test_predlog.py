"""The prediction log: records of served requests (task routes and V2), JSONL rotation,
CloudEvents to a real HTTP collector, and a failing or stalled sink that only drops records."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.classify.service import ClassifyService
from shared.app import create_app
from shared.metrics import Metrics
from shared.predlog import EVENT_TYPE, CloudEventsSink, JsonlSink, PredictionLog
from shared.settings import ServingSettings
from shared.supervisor import WORKER_ENV
from tests.procs import poll_until
from tests.tinydrift import CLEAN, digit_pixels, model_inputs, pngs, seed_drift_cache
from tests.unit.conftest import DEAD_REGISTRY, wait_ready

PNG = {"content-type": "image/png"}


def exported(client: TestClient, name: str, reason: str | None = None) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("reason") == reason:
                return sample.value
    raise AssertionError(f"{name} {reason or ''} not exported")


def settings_for(tmp_path: Path, **overrides: Any) -> ServingSettings:
    seed_drift_cache(tmp_path / "cache")
    wanted: dict[str, Any] = {
        "mlflow_tracking_uri": DEAD_REGISTRY,
        "model_cache_dir": tmp_path / "cache",
        "onnx_intra_op_threads": 1,
        "prediction_log_rate": 1.0,
        "prediction_log_dir": tmp_path / "predictions",
        "log_json": False,
    }
    return ServingSettings(**{**wanted, **overrides})


def serving(settings: ServingSettings) -> TestClient:
    return TestClient(create_app(ClassifyService, settings))


def lines(path: Path, count: int) -> list[dict[str, Any]]:
    def written() -> list[dict[str, Any]] | None:
        found = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in found] if len(found) >= count else None

    return poll_until(written, 10, f"{count} records in {path}")


def test_each_request_is_logged_with_its_id_model_and_summaries_not_its_bytes(
    tmp_path: Path,
) -> None:
    image = digit_pixels(CLEAN[:1])
    with serving(settings_for(tmp_path)) as client:
        wait_ready(client)
        answer = client.post("/v1/classify?top_k=1", content=pngs(image)[0], headers=PNG)
        assert answer.status_code == 200
        tensor = model_inputs(image)
        v2 = {"inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "FP32",
                          "data": tensor.ravel().tolist()}]}  # fmt: skip
        assert client.post("/v2/models/classify/infer", json=v2).status_code == 200
        first, second = lines(tmp_path / "predictions" / "classify.jsonl", 2)
    assert first["request_id"] == answer.headers["x-request-id"]
    assert first["endpoint"] == "/v1/classify" and second["endpoint"] == "/v2/models/{name}/infer"
    assert first["model"] == answer.json()["model"]
    (item,) = first["items"]
    assert item["output"]["label"] == answer.json()["predictions"][0]["label"]
    assert item["output"]["score"] == pytest.approx(
        answer.json()["predictions"][0]["score"], abs=1e-5
    )
    assert item["input"]["shape"] == [3, 8, 8] and "data_base64" not in item["input"]
    assert item["input"]["mean"] == pytest.approx(float(tensor.mean()), abs=1e-5)
    # the same image by either protocol is the same model input: the same hash
    assert second["items"][0]["input"]["sha256"] == item["input"]["sha256"]
    assert first["latency_ms"] > 0


def test_raw_inputs_are_logged_only_when_asked(tmp_path: Path) -> None:
    image = digit_pixels(CLEAN[:1])
    with serving(settings_for(tmp_path, prediction_log_inputs=True)) as client:
        wait_ready(client)
        assert client.post("/v1/classify", content=pngs(image)[0], headers=PNG).status_code == 200
        (record,) = lines(tmp_path / "predictions" / "classify.jsonl", 1)
    raw = np.frombuffer(base64.b64decode(record["items"][0]["input"]["data_base64"]), np.float32)
    np.testing.assert_array_equal(raw, model_inputs(image).ravel())


def test_sampling_rate_logs_about_that_share(tmp_path: Path) -> None:
    bodies = pngs(digit_pixels(CLEAN[:100]))
    with serving(settings_for(tmp_path, prediction_log_rate=0.3)) as client:
        wait_ready(client)
        for body in bodies:
            assert client.post("/v1/classify", content=body, headers=PNG).status_code == 200
        poll_until(
            lambda: client.get("/v1/model/drift").json()["models"]["classify"]["items_seen"] == 100,
            10,
            "every request observed",
        )
        written = exported(client, "modelplane_prediction_log_records_total")
    assert 12 <= written <= 50  # binomial(100, 0.3): outside this is < 1e-4 likely


def test_jsonl_sink_rotates_and_keeps_the_stated_backups(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "log.jsonl", max_bytes=1024, backups=2)
    for index in range(200):
        sink.write({"index": index, "pad": "x" * 40})
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    kept = [json.loads(line)["index"] for name in reversed(files)
            for line in (tmp_path / name).read_text().splitlines()]  # fmt: skip
    assert kept == list(range(kept[0], 200))  # oldest dropped, the rest in order
    assert (tmp_path / "log.jsonl.1").stat().st_size >= 1024


class Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Collector.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_cloudevents_reach_a_real_collector_in_kserve_logger_format(
    tmp_path: Path, collector: str
) -> None:
    with serving(settings_for(tmp_path, prediction_log_url=collector)) as client:
        wait_ready(client)
        body = pngs(digit_pixels(CLEAN[:1]))[0]
        answer = client.post("/v1/classify", content=body, headers=PNG)
        poll_until(lambda: Collector.received, 10, "an event at the collector")
        assert exported(client, "modelplane_prediction_log_records_total") == 1
    headers, payload = Collector.received[0]
    assert headers["ce-specversion"] == "1.0" and headers["ce-type"] == EVENT_TYPE
    assert headers["ce-id"] == answer.headers["x-request-id"]
    assert headers["ce-source"] == "modelplane/classify"
    assert headers["ce-inferenceservicename"] == "classify"
    assert headers["content-type"] == "application/json"
    assert (
        json.loads(payload)["items"][0]["output"]["label"]
        == answer.json()["predictions"][0]["label"]
    )
    assert not (tmp_path / "predictions").exists()  # one sink: the URL replaces the file


def test_a_refusing_sink_drops_and_counts_every_record(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        with serving(settings_for(tmp_path, prediction_log_url=url)) as client:
            wait_ready(client)
            for body in pngs(digit_pixels(CLEAN[:5])):
                assert client.post("/v1/classify", content=body, headers=PNG).status_code == 200
            poll_until(
                lambda: (
                    exported(client, "modelplane_prediction_log_dropped_total", "sink_error") == 5
                ),
                10,
                "five records dropped",
            )
            assert exported(client, "modelplane_prediction_log_records_total") == 0


def test_a_stalled_sink_never_blocks_submit_and_counts_what_it_sheds() -> None:
    release = threading.Event()

    class Stalled:
        def write(self, record: dict[str, Any]) -> None:
            release.wait(10)

        def close(self) -> None:
            pass

    metrics = Metrics("classify")
    log = PredictionLog(Stalled(), capacity=4, metrics=metrics)
    for index in range(50):  # all while the sink hangs: a waiting submit could not drop
        log.submit({"index": index})
    value = metrics.registry.get_sample_value
    labels = {"service": "classify", "reason": "sink_behind"}
    assert value("modelplane_prediction_log_dropped_total", labels) >= 45  # 1 writing, 4 queued
    release.set()
    log.close()
    written = value("modelplane_prediction_log_records_total", {"service": "classify"})
    assert written + value("modelplane_prediction_log_dropped_total", labels) == 50


def test_cloudevents_sink_gives_up_after_its_timeout() -> None:
    with socket.socket() as sock:  # listening, never accepting: the request hangs
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sink = CloudEventsSink(f"http://127.0.0.1:{sock.getsockname()[1]}/", "classify", 0.2)
        record = {"request_id": "r", "time": "t", "model": {"name": "m"}, "endpoint": "/e"}
        started = time.perf_counter()
        with pytest.raises(OSError):
            sink.write(record)
        assert time.perf_counter() - started < 5


def test_each_process_of_an_instance_writes_a_file_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKER_ENV, "1")  # process 1 of several on one port
    image = digit_pixels(CLEAN[:1])
    with serving(settings_for(tmp_path)) as client:
        wait_ready(client)
        assert client.post("/v1/classify", content=pngs(image)[0], headers=PNG).status_code == 200
        (record,) = lines(tmp_path / "predictions" / "classify-1.jsonl", 1)
    assert record["endpoint"] == "/v1/classify"
    assert not (tmp_path / "predictions" / "classify.jsonl").exists()  # no shared rotation
