"""Every series the autoscalers query exists in a real scrape of a running service.

The KEDA ScaledObjects (k8s/autoscaling/keda), the InferenceServices' KEDA metrics (k8s/kserve)
and the Prometheus Adapter's rules (k8s/autoscaling/prometheus-adapter, the HPAs' custom
metrics) name metrics and labels in PromQL; a renamed metric or label would leave an autoscaler
reading nothing, which scales nothing and raises no error. A real classify process serves one
V2 REST and one gRPC request, and its /metrics must hold every series classify's queries select.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import free_port
from tests.tinymodels import seed_cache
from tests.tinyserve import serve_cached

ROOT = Path(__file__).resolve().parents[2]
SELECTOR = re.compile(r"(modelplane_\w+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
#: labels Prometheus adds at scrape time (the service's own /metrics has none of them)
TARGET_LABELS = {"namespace", "pod"}


def rendered(directory: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", directory], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def classify_queries() -> list[str]:
    """Every PromQL expression an autoscaler of classify evaluates."""
    queries = []
    for doc in rendered("k8s/autoscaling/keda"):
        if doc["kind"] == "ScaledObject" and doc["metadata"]["name"] == "classify":
            queries += [t["metadata"]["query"] for t in doc["spec"]["triggers"]]
    for doc in rendered("k8s/kserve"):
        if doc["kind"] == "InferenceService" and doc["metadata"]["name"] == "classify":
            metrics = doc["spec"]["predictor"]["autoScaling"]["metrics"]
            queries += [m["external"]["metric"]["query"] for m in metrics]
    rules = yaml.safe_load((ROOT / "k8s/autoscaling/prometheus-adapter/config.yaml").read_text())
    for rule in rules["rules"]:
        series = SELECTOR.match(rule["seriesQuery"].strip("'"))
        assert series, rule["seriesQuery"]
        # the adapter's template, filled in as it does for classify's pods
        query = rule["metricsQuery"].replace("<<.Series>>", series.group(1))
        query = query.replace("<<.LabelMatchers>>", 'namespace="modelplane",pod="classify-0"')
        queries += [rule["seriesQuery"], query.replace("<<.GroupBy>>", "pod")]
    return queries


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list]]:
    """classify's /metrics after one V2 REST and one gRPC inference: sample name -> labels."""
    root = tmp_path_factory.mktemp("autoscaling")
    seed_cache(root / "cache")
    grpc_port = free_port()
    with serve_cached(
        "classify", root / "cache", root / "classify.log", {"GRPC_PORT": str(grpc_port)}
    ) as s:
        x = np.zeros((2, 3, 8, 8), np.float32)
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
        assert (
            httpx.post(f"{s.url}/v2/models/classify/infer", json=body, timeout=10).status_code
            == 200
        )
        client = tgrpc.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        try:
            tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            client.infer("classify", [tensor])
        finally:
            client.close()
        text = httpx.get(f"{s.url}/metrics", timeout=5).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    yield samples


def test_every_series_the_autoscalers_query_is_in_a_real_scrape(scrape: dict[str, list]) -> None:
    queries = classify_queries()
    assert len(queries) >= 10  # KEDA: 2 triggers, KServe: 2 metrics, adapter: 3 rules x 2
    checked = set()
    for query in queries:
        for match in SELECTOR.finditer(query):
            name, matchers = match.group(1), MATCHER.findall(match.group(2) or "")
            assert name in scrape, f"{name} (in {query!r}) is not in classify's /metrics"
            wanted = [(k, op, v) for k, op, v in matchers if k not in TARGET_LABELS]
            hits = [
                labels
                for labels in scrape[name]
                if all(selects(labels.get(k, ""), op, v) for k, op, v in wanted)
            ]
            assert hits, f"no {name} sample matches {wanted} (in {query!r}): {scrape[name]}"
            checked.add(name)
    assert checked >= {
        "modelplane_queue_depth",
        "modelplane_request_duration_seconds_sum",
        "modelplane_grpc_request_duration_seconds_sum",
    }


def selects(value: str, op: str, wanted: str) -> bool:
    """PromQL's label matchers (regexes are anchored)."""
    if op == "=":
        return value == wanted
    if op == "!=":
        return value != wanted
    found = re.fullmatch(wanted, value) is not None
    return found if op == "=~" else not found


def test_the_in_flight_route_filter_counts_inference_and_not_probes(
    scrape: dict[str, list],
) -> None:
    routes = {labels["route"] for labels in scrape["modelplane_request_duration_seconds_sum"]}
    counted = {r for r in routes if re.fullmatch("/v[12]/.+", r)}
    assert "/v2/models/{name}/infer" in counted, routes
    assert not counted & {"/readyz", "/livez", "/metrics"}
