"""A real Prometheus (Debian's package) scraping a real classify process and a real MLflow server
with the project's own prometheus.yml and rules: the metrics arrive with the expected labels and
every rule evaluates."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.media import encode_png, gray_to_image
from shared.metrics import LATENCY_BUCKETS
from tests.procs import free_port, poll_until, running, wait_http
from tests.tinyserve import seed_two_speed_cache, serve_classify
from training.data import load_splits

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
TASK = {"route": "/v1/classify", "service": "classify"}


def local_config(tmp: Path, target: str, registry: str) -> Path:
    """observability/prometheus.yml with fast intervals, its service job pointed at `target`
    and its MLflow job at `registry`."""
    config = yaml.safe_load((OBS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(OBS / pattern) for pattern in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"modelplane", "mlflow"}
    classify = {"targets": [target], "labels": {"service": "classify"}}
    jobs["modelplane"]["static_configs"] = [classify]
    jobs["mlflow"]["static_configs"] = [{"targets": [registry]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def classify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("classify")
    seed_two_speed_cache(tmp / "cache")
    with serve_classify(tmp / "cache", tmp / "classify.log") as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(
    classify: str, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: `make test` installs Debian's prometheus package (TOOLS)"
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = local_config(
        tmp, classify.removeprefix("http://"), mlflow_server.removeprefix("http://")
    )
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(cmd, tmp / "prometheus.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, tmp / "prometheus.log", timeout_s=60)
        yield f"http://127.0.0.1:{port}"


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]["result"]


def send_digits(classify: str, count: int) -> None:
    images = load_splits()["test"].images[:count]
    with httpx.Client(base_url=classify, timeout=30) as http:
        for pixels in images:
            png = encode_png(gray_to_image(pixels))
            answer = http.post("/v1/classify", content=png, headers={"content-type": "image/png"})
            assert answer.status_code == 200, answer.text


def send_garbage(classify: str, count: int) -> None:
    for _ in range(count):
        answer = httpx.post(
            f"{classify}/v1/classify",
            content=b"not an image",
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert answer.status_code == 400, answer.text


@pytest.fixture(scope="module")
def scraped(classify: str, prometheus: str) -> str:
    """Traffic before and after a first scrape, so rates over it are non-zero."""
    send_digits(classify, 10)
    poll_until(lambda: query(prometheus, "modelplane_requests_total"), 60, "a first scrape", 0.25)
    send_digits(classify, 20)
    send_garbage(classify, 3)

    def counted() -> bool:
        ok = query(prometheus, 'sum(modelplane_requests_total{route="/v1/classify"})')
        return bool(ok) and float(ok[0]["value"][1]) >= 33

    poll_until(counted, 60, "33 classify requests in Prometheus", 0.25)
    return prometheus


def test_request_counter_arrives_with_service_route_method_and_status(scraped: str) -> None:
    series = query(scraped, 'modelplane_requests_total{route="/v1/classify"}')
    by_status = {s["metric"]["status"]: float(s["value"][1]) for s in series}
    assert by_status == {"200": 30.0, "400": 3.0}
    for s in series:
        labels = s["metric"]
        assert set(labels) == {
            "__name__",
            "service",
            "route",
            "method",
            "status",
            "instance",
            "job",
        }
        assert labels | TASK == labels and labels["method"] == "POST"
        assert labels["job"] == "modelplane"


def test_latency_histogram_arrives_with_every_bucket(scraped: str) -> None:
    buckets = query(scraped, 'modelplane_request_duration_seconds_bucket{route="/v1/classify"}')
    bounds = sorted(float(s["metric"]["le"]) for s in buckets)
    assert bounds == [*LATENCY_BUCKETS, math.inf]
    for s in buckets:
        assert s["metric"] | TASK == s["metric"] and s["metric"]["method"] == "POST"
    counts = {float(s["metric"]["le"]): float(s["value"][1]) for s in buckets}
    assert counts[math.inf] == 33
    assert [counts[b] for b in sorted(counts)] == sorted(counts.values())  # cumulative
    total = query(scraped, 'modelplane_request_duration_seconds_count{route="/v1/classify"}')
    assert float(total[0]["value"][1]) == 33


def test_model_info_and_readiness_arrive(scraped: str) -> None:
    info = query(scraped, "modelplane_model_info")
    assert len(info) == 1
    labels = info[0]["metric"]
    assert (labels["service"], labels["name"], labels["version"], labels["variant"]) == (
        "classify",
        "classify",
        "1",
        "fp32",
    )
    ready = query(scraped, 'modelplane_ready{service="classify"}')
    assert float(ready[0]["value"][1]) == 1


def test_recording_rules_compute_latency_and_error_ratio(scraped: str, classify: str) -> None:
    def p99() -> list[dict[str, Any]]:
        send_digits(classify, 2)  # keep the rate over the window non-zero
        found = query(scraped, "service:modelplane_request_duration_seconds:p99_5m")
        return [s for s in found if not math.isnan(float(s["value"][1]))]

    result = poll_until(p99, 60, "the recorded p99", 0.25)
    assert result[0]["metric"] == {
        "__name__": "service:modelplane_request_duration_seconds:p99_5m",
        "service": "classify",
    }
    assert 0 < float(result[0]["value"][1]) <= 10
    ratio = query(scraped, "service:modelplane_request_errors:ratio_rate5m")
    assert ratio and float(ratio[0]["value"][1]) == 0  # the 400s are the client's, not errors


def test_every_rule_evaluates_cleanly_and_no_alert_fires(scraped: str) -> None:
    def evaluated() -> list[dict[str, Any]]:
        groups = httpx.get(f"{scraped}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else []

    rules = poll_until(evaluated, 60, "every rule evaluated", 0.25)
    expected = yaml.safe_load((OBS / "rules" / "modelplane.yml").read_text())
    assert len(rules) == sum(len(g["rules"]) for g in expected["groups"])
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    alerts = httpx.get(f"{scraped}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert alerts == [], f"a healthy service raised alerts: {alerts}"


def test_the_registry_is_scraped_too(scraped: str, mlflow_server: str) -> None:
    httpx.get(f"{mlflow_server}/api/2.0/mlflow/experiments/search", params={"max_results": 1})

    def requests_counted() -> list[dict[str, Any]]:
        return query(scraped, 'mlflow_http_request_total{job="mlflow"}')

    counted = poll_until(requests_counted, 60, "MLflow's request counter in Prometheus", 0.25)
    assert sum(float(s["value"][1]) for s in counted) >= 1
    assert {s["metric"]["status"] for s in counted} >= {"200"}
    up = query(scraped, 'up{job="mlflow"}')
    assert [float(s["value"][1]) for s in up] == [1.0]
