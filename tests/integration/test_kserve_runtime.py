"""The KServe runtime's container, run as KServe would run it, as a real local process.

Command, arguments, environment, ports and probes are read from k8s/kserve (the serve-onnx
ClusterServingRuntime and the classify InferenceService), never restated here. What a pod would
give the container is given locally instead: `{{.Name}}` is the InferenceService's name, every
container port a free loopback port, every volume mount a temporary directory, 0.0.0.0 the
loopback address, `limits.cpu` the InferenceService's limit, the Secret's API_TOKEN a test token,
and the settings ConfigMap a registry that is down (the service serves its verified cache).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import yaml

from tests.procs import BIN, free_port, running, wait_http
from tests.tinymodels import linear_logits, seed_cache, tiny_classifier
from tests.tinyserve import DEAD_REGISTRY, v2_logits_over_rest

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "k8s" / "kserve"
TOKEN = "kserve-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def inference_service(name: str) -> dict[str, Any]:
    return next(
        d for d in documents(KSERVE / "inferenceservices.yaml") if d["metadata"]["name"] == name
    )


def runtime_of(isvc: dict[str, Any]) -> dict[str, Any]:
    wanted = isvc["spec"]["predictor"]["model"]["runtime"]
    for path in sorted((KSERVE / "runtimes").glob("*.yaml")):
        for doc in documents(path):
            if doc["kind"] == "ClusterServingRuntime" and doc["metadata"]["name"] == wanted:
                return doc
    raise AssertionError(f"no ClusterServingRuntime {wanted} in k8s/kserve/runtimes")


@dataclass(frozen=True)
class Pod:
    """What the container gets: its command, environment, and where its ports and mounts are."""

    cmd: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    mounts: dict[str, Path]
    probes: dict[str, tuple[str, str]]


def as_kserve_runs_it(isvc: dict[str, Any], root: Path) -> Pod:
    runtime = runtime_of(isvc)
    (container,) = runtime["spec"]["containers"]
    model = isvc["spec"]["predictor"]["model"]
    name = isvc["metadata"]["name"]
    cmd = [a.replace("{{.Name}}", name) for a in [*container["command"], *container["args"]]]
    ports = {p["name"]: free_port() for p in container["ports"]}
    port_of = {str(p["containerPort"]): str(ports[p["name"]]) for p in container["ports"]}
    mounts = {m["mountPath"]: root / m["name"] for m in container["volumeMounts"]}
    env = {}
    for var in [*container["env"], *model.get("env", [])]:
        source = var.get("valueFrom", {})
        if "value" in var:
            value = str(var["value"])
            value = port_of.get(value, value)
            value = str(mounts.get(value, value))
            env[var["name"]] = "127.0.0.1" if value == "0.0.0.0" else value
        elif source.get("resourceFieldRef", {}).get("resource") == "limits.cpu":
            env[var["name"]] = str(model["resources"]["limits"]["cpu"])
        elif source.get("secretKeyRef", {}).get("key") == "API_TOKEN":
            env[var["name"]] = TOKEN
        else:
            raise AssertionError(f"{var['name']}: no local stand-in for {source}")
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    return Pod(cmd, env, ports, mounts, probes)


@dataclass(frozen=True)
class Served:
    pod: Pod

    def url(self, port: str) -> str:
        return f"127.0.0.1:{self.pod.ports[port]}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("kserve")
    pod = as_kserve_runs_it(inference_service("classify"), root)
    seed_cache(pod.mounts["/var/cache/modelplane"], fitted=True)
    # the settings ConfigMap of a cluster whose registry is down, and a quiet log
    settings = {"MLFLOW_TRACKING_URI": DEAD_REGISTRY, "LOG_JSON": "true", "LOG_LEVEL": "WARNING"}
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # `modelplane` as the image has it
    log = root / "classify.log"
    with running(pod.cmd, log, {**settings, **pod.env, "PATH": path}) as proc:
        ready_path, ready_port = pod.probes["readinessProbe"]
        wait_http(f"http://127.0.0.1:{pod.ports[ready_port]}{ready_path}", proc, log, 120)
        yield Served(pod)


def test_the_runtime_runs_the_images_command_for_the_inference_service(served: Served) -> None:
    assert served.pod.cmd == ["modelplane", "serve", "classify"]
    for path, port in served.pod.probes.values():
        assert httpx.get(f"http://{served.url(port)}{path}", timeout=5).status_code == 200


def test_the_runtime_answers_v2_over_http_and_grpc_with_the_same_numbers(served: Served) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, size=(5, 3, 8, 8)).astype(np.float32)
    expected = linear_logits(tiny_classifier(fitted=True), x)

    over_rest = v2_logits_over_rest(served.url("http1"), x, AUTH)

    grpc = tgrpc.InferenceServerClient(url=served.url("h2c"))
    try:
        assert grpc.is_server_ready() and grpc.is_model_ready("classify", headers=AUTH)
        tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        over_grpc = grpc.infer("classify", [tensor], headers=AUTH).as_numpy("logits")
    finally:
        grpc.close()

    np.testing.assert_allclose(over_rest, expected, atol=1e-4)
    np.testing.assert_array_equal(over_grpc, over_rest)
    # the token from the Secret is enforced on both protocols
    assert (
        httpx.post(f"http://{served.url('http1')}/v2/models/classify/infer", json={}).status_code
        == 401
    )


def test_the_runtime_serves_metrics_on_the_port_kserve_scrapes(served: Served) -> None:
    scrape = httpx.get(f"http://{served.url('metrics')}/metrics", timeout=5)
    assert scrape.status_code == 200
    assert 'modelplane_ready{service="classify"} 1.0' in scrape.text
