"""Drift and the prediction log on a real uvicorn process serving a bundle with a drift
reference: clean held-out digits keep it quiet, inverted ones raise the alarm within the stated
number of requests (gauges and GET /v1/model/drift), and a stalled CloudEvents sink costs no
request anything but its record (dropped, counted)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import poll_until
from tests.tinydrift import CLEAN, CORRUPTIONS, digit_pixels, pngs, seed_drift_cache
from tests.tinyserve import serve_cached

PNG = {"content-type": "image/png"}
WINDOW = 100
WITHIN = 60  # inverted digits: requests until the alarm (measured: 10-20 in tests/unit)


def samples(url: str, prefix: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (sample.name, sample.labels.get("test", sample.labels.get("reason", ""))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(prefix)
    }


def drift_after(client: httpx.Client, url: str, sent: int) -> dict:
    def seen() -> dict | None:
        report = client.get(f"{url}/v1/model/drift").json()
        return report if report["models"]["classify"]["items_seen"] == sent else None

    return poll_until(seen, 20, f"the observer saw {sent} requests")


def test_clean_digits_stay_quiet_and_inverted_ones_raise_the_alarm(tmp_path: Path) -> None:
    seed_drift_cache(tmp_path / "cache")
    env = {"DRIFT_WINDOW": str(WINDOW), "DRIFT_CHECK_EVERY": "10"}
    clean = pngs(digit_pixels(CLEAN[:WINDOW]))
    inverted = pngs(CORRUPTIONS["inverted"](digit_pixels(CLEAN[WINDOW:])))
    with serve_cached("classify", tmp_path / "cache", tmp_path / "classify.log", env) as served:
        url = served.url
        with httpx.Client(timeout=10) as client:
            for body in clean:
                assert client.post(f"{url}/v1/classify", content=body, headers=PNG).is_success
            quiet = drift_after(client, url, WINDOW)
            assert quiet["drifted"] is False, quiet
            assert (
                samples(url, "modelplane_drift_detected")[("modelplane_drift_detected", "features")]
                == 0
            )
            sent = 0
            for body in inverted:
                assert client.post(f"{url}/v1/classify", content=body, headers=PNG).is_success
                sent += 1
                if sent % 10 == 0 and drift_after(client, url, WINDOW + sent)["drifted"]:
                    break
            print(f"inverted digits: alarm after {sent} requests (window {WINDOW})")
            assert sent <= WITHIN
            report = client.get(f"{url}/v1/model/drift").json()["models"]["classify"]
            assert set(report["tests"]) == {"features", "classes", "mmd"}
            flagged = {name for name, test in report["tests"].items() if test["drifted"]}
            print(f"flagged by: {sorted(flagged)}")
            assert flagged, report["tests"]
            for name in flagged:
                assert report["tests"][name]["p_value"] < report["p_value_threshold"]

            def gauged() -> dict | None:  # the observer sets them once its own check is done
                gauges = samples(url, "modelplane_drift_")
                flags = [gauges[("modelplane_drift_detected", name)] for name in flagged]
                return gauges if any(flag == 1 for flag in flags) else None

            gauges = poll_until(gauged, 10, "a drift gauge flagged")
            assert gauges[("modelplane_drift_window_items", "")] == WINDOW


def test_a_stalled_cloudevents_sink_never_delays_a_request(tmp_path: Path) -> None:
    seed_drift_cache(tmp_path / "cache")
    with socket.socket() as sink:  # accepts connections into its backlog, never answers
        sink.bind(("127.0.0.1", 0))
        sink.listen(64)
        env = {
            "PREDICTION_LOG_RATE": "1",
            "PREDICTION_LOG_URL": f"http://127.0.0.1:{sink.getsockname()[1]}/events",
            "PREDICTION_LOG_TIMEOUT_S": "30",
            "PREDICTION_LOG_QUEUE": "4",
        }
        bodies = pngs(digit_pixels(CLEAN[:40]))
        log = tmp_path / "classify.log"
        with (
            serve_cached("classify", tmp_path / "cache", log, env) as s,
            httpx.Client(timeout=60) as client,
        ):
            slowest = 0.0
            for body in bodies:
                started = time.perf_counter()
                answer = client.post(f"{s.url}/v1/classify", content=body, headers=PNG)
                slowest = max(slowest, time.perf_counter() - started)
                assert answer.status_code == 200
            # 40 records into a sink that holds each for 30 s: a request that waited for
            # it would take 30 s; every one answered long before the sink's first timeout
            assert slowest < 10, f"slowest request {slowest:.3f}s"
            dropped = samples(s.url, "modelplane_prediction_log_dropped_total")
            assert dropped[("modelplane_prediction_log_dropped_total", "sink_behind")] >= 30
            written = samples(s.url, "modelplane_prediction_log_records_total")
            assert written[("modelplane_prediction_log_records_total", "")] == 0
