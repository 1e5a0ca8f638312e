"""Canary and shadow rollouts driven by registry aliases, with the automatic gate.

Two real classify replicas follow `rollout@production` and `rollout@challenger` in a real
MLflow registry; a real Prometheus scrapes both. The canary split is checked against the
binomial interval, sticky keys against themselves; then three rollouts under load: a good
challenger is promoted (decided from Prometheus), a slower one (a real slower graph) and one
fitted to shuffled labels are rolled back (decided from the replicas' /metrics), each with
zero failed requests and the reasons written as tags on the version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import mlflow
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tgrpc
import yaml
from mlflow.tracking import MlflowClient
from scipy.stats import binom

from shared.registration import register, use_tracking_server
from tests.procs import free_port, poll_until, running, wait_http
from tests.tinymodels import digit_png, tiny_classifier, write_tiny_bundle
from tests.tinyserve import slow_classifier

pytestmark = pytest.mark.integration
NAME = "rollout"
CANARY = 20.0
PNG = {"content-type": "image/png"}
DIGITS = [digit_png(i)[0] for i in range(60)]  # held-out digits, as real clients would send
ZERO = [0.0] * (3 * 8 * 8)


def good_classifier() -> onnx.ModelProto:
    """A good challenger: the digit classifier fitted on fewer digits (agrees ~97% with v1)."""
    return tiny_classifier(fitted=True, train=1000)


def publish(tmp: Path, label: str, alias: str, graph: onnx.ModelProto | None = None) -> str:
    """Register a tiny classify bundle (`graph`, default the fitted digit classifier) as a new
    version of NAME behind `alias`."""
    bundle = write_tiny_bundle(tmp / label, name=NAME, fitted=True, model=graph)
    with mlflow.start_run(run_name=label):
        return register(bundle, NAME, alias=alias)


class Load:
    """Requests from `threads` threads to every replica in turn, each answer's status kept."""

    def __init__(self, urls: list[str], threads: int = 2) -> None:
        self.urls = urls
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, offset: int) -> None:
        with httpx.Client(timeout=15) as client:
            n = offset
            while not self._stop.is_set():
                url = self.urls[n % len(self.urls)]
                answer = client.post(f"{url}/v1/classify", content=DIGITS[n % 60], headers=PNG)
                self.statuses[answer.status_code] += 1
                n += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=20)


def challenger_of(url: str) -> dict[str, object]:
    return httpx.get(f"{url}/v1/model", timeout=5).json()["models"]["classify"]["challenger"]


def wait_challenger(urls: list[str], version: str | None) -> None:
    """Every replica serves `version` as its challenger (None: serves none)."""

    def settled() -> bool:
        for url in urls:
            seen = challenger_of(url)
            if (seen.get("version") if seen["served"] else None) != version:
                return False
        return True

    poll_until(settled, 60, f"challenger {version} on every replica")


def production_of(url: str) -> str:
    return str(httpx.get(f"{url}/v1/model", timeout=5).json()["version"])


@pytest.fixture(scope="module")
def stack(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The registry with v1 in production, two replicas, and Prometheus scraping both."""
    tmp = tmp_path_factory.mktemp("rollout")
    use_tracking_server(mlflow_server)
    mlflow.set_experiment("rollout-test")
    v1 = publish(tmp, "v1", "production")
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MODEL_URI": f"models:/{NAME}@production",
        "MODEL_CACHE_DIR": str(tmp / "cache"),
        "RELOAD_INTERVAL_S": "0.3",
        "ONNX_INTRA_OP_THREADS": "1",
        "CANARY_PERCENT": str(CANARY),
        "SHADOW_PERCENT": "100",
    }
    ports, grpc_port = [free_port(), free_port()], free_port()
    with ExitStack() as stack:
        for index, port in enumerate(ports):
            cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
            log = tmp / f"replica{index}.log"
            grpc = {"GRPC_PORT": str(grpc_port if index == 0 else 0)}
            proc = stack.enter_context(running(cmd, log, {**env, **grpc}))
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        binary = shutil.which("prometheus")
        assert binary, "prometheus missing: `make test` installs Debian's prometheus (TOOLS)"
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "modelplane",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_port = free_port()
        cmd = [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ]
        proc = stack.enter_context(running(cmd, tmp / "prometheus.log"))
        prometheus = f"http://127.0.0.1:{prom_port}"
        wait_http(f"{prometheus}/-/ready", proc, tmp / "prometheus.log", timeout_s=60)
        yield {
            "tmp": tmp,
            "v1": v1,
            "urls": [f"http://127.0.0.1:{p}" for p in ports],
            "prometheus": prometheus,
            "registry": mlflow_server,
            "grpc": f"127.0.0.1:{grpc_port}",
        }


def classify(url: str, index: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/classify", content=DIGITS[index % 60], headers={**PNG, **(headers or {})}
    )


def test_canary_split_sticky_keys_and_named_alias(stack: dict) -> None:
    url = stack["urls"][0]
    assert challenger_of(url) == {
        "served": False,
        "uri": f"models:/{NAME}@challenger",
        "reason": f"models:/{NAME}@challenger names no version",
    }
    assert classify(url, 0, {"x-model-alias": "challenger"}).status_code == 503
    v2 = publish(stack["tmp"], "v2", "challenger", good_classifier())
    wait_challenger(stack["urls"], v2)
    ready = httpx.get(f"{url}/readyz").json()
    assert (
        ready["model"]["version"] == stack["v1"]
        and ready["challengers"]["classify"]["version"] == v2
    )

    def version(index: int) -> str:
        answer = classify(url, index)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["model"]["version"])

    with ThreadPoolExecutor(4) as pool:
        versions = Counter(pool.map(version, range(2000)))
    assert set(versions) == {stack["v1"], v2}
    low, high = binom.interval(0.999, 2000, CANARY / 100)
    assert low <= versions[v2] <= high, f"challenger answered {versions[v2]} of 2000"

    sides = {}
    for key in (f"client-{k}" for k in range(60)):
        seen = {
            classify(url, n, {"x-rollout-key": key}).json()["model"]["version"] for n in range(4)
        }
        assert len(seen) == 1, f"key {key} answered by {seen}"
        sides[key] = seen.pop()
    assert set(sides.values()) == {stack["v1"], v2}  # the keys spread over both versions

    named = classify(url, 1, {"x-model-alias": "challenger", "x-rollout-key": "client-0"})
    assert named.json()["model"]["version"] == v2
    assert (
        classify(url, 1, {"x-model-alias": "production"}).json()["model"]["version"] == stack["v1"]
    )
    unknown = classify(url, 1, {"x-model-alias": "staging"})
    assert unknown.status_code == 400 and "unknown alias 'staging'" in unknown.json()["detail"]
    v2_infer = httpx.post(
        f"{url}/v2/models/{NAME}/versions/{v2}/infer",
        json={
            "inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": ZERO}]
        },
    )
    assert v2_infer.status_code == 200 and v2_infer.json()["model_version"] == v2

    with tgrpc.InferenceServerClient(stack["grpc"]) as client:  # metadata names the alias
        tensor = tgrpc.InferInput("input", [1, 3, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
        named_call = client.infer(NAME, [tensor], headers={"x-model-alias": "challenger"})
        assert named_call.get_response().model_version == v2
        by_version = client.infer(NAME, [tensor], model_version=stack["v1"])
        assert by_version.get_response().model_version == stack["v1"]

    metrics = httpx.get(f"{url}/metrics").text
    compared = [
        line
        for line in metrics.splitlines()
        if line.startswith("modelplane_shadow_requests_total") and 'outcome="compared"' in line
    ]
    assert compared and float(compared[0].split()[-1]) > 0


def gate(stack: dict, *source: str, **limits: float) -> tuple[int, dict]:
    """Run `modelplane rollout` as a real process; its exit status and JSON decision."""
    options = {"min_canary": 150, "min_shadow": 150, "max_p95_ratio": 2.0, "min_agreement": 0.8}
    options.update(limits)
    cmd = [
        sys.executable, "-m", "modelplane", "rollout", "--name", NAME, "--service", "classify",
        "--tracking-uri", stack["registry"], "--poll", "1", "--timeout", "120", *source,
    ]  # fmt: skip
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def tags(stack: dict, version: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=stack["registry"], registry_uri=stack["registry"])
    return dict(client.get_model_version(NAME, version).tags)


def aliases(stack: dict) -> dict[str, str]:
    client = MlflowClient(tracking_uri=stack["registry"], registry_uri=stack["registry"])
    return dict(client.get_registered_model(NAME).aliases)


def test_good_promoted_slow_and_disagreeing_rolled_back(stack: dict) -> None:
    urls, tmp = stack["urls"], stack["tmp"]
    if not any(challenger_of(u)["served"] for u in urls):  # run alone: publish its challenger
        wait_challenger(urls, publish(tmp, "v2", "challenger", good_classifier()))
    good = str(challenger_of(urls[0])["version"])
    with Load(urls) as load:
        status, decision = gate(stack, "--prometheus", stack["prometheus"])
        assert (status, decision["decision"]) == (0, "promoted"), decision
        poll_until(lambda: all(production_of(u) == good for u in urls), 60, "the promotion")
        wait_challenger(urls, None)

        slow = publish(tmp, "slow", "challenger", slow_classifier(1, 1024, 48, good_classifier()))
        wait_challenger(urls, slow)
        status, slow_decision = gate(stack, *(f"--metrics-url={u}/metrics" for u in urls))
        wait_challenger(urls, None)

        shuffled = publish(
            tmp, "shuffled", "challenger", tiny_classifier(fitted=True, shuffled=True)
        )
        wait_challenger(urls, shuffled)
        status2, shuffled_decision = gate(stack, *(f"--metrics-url={u}/metrics" for u in urls))
        wait_challenger(urls, None)
    for made in (decision, slow_decision, shuffled_decision):  # the figures, for the record
        print(json.dumps(made))
    assert set(load.statuses) == {200}, f"failed requests during the rollouts: {load.statuses}"
    assert sum(load.statuses.values()) > 900

    assert tags(stack, good)["rollout.decision"] == "promoted"
    assert json.loads(tags(stack, good)["rollout.figures"])["agreement"] >= 0.8
    assert aliases(stack) == {"production": good}

    assert (status, slow_decision["decision"]) == (3, "rolled_back"), slow_decision
    assert (
        slow_decision["figures"]["p95_ratio"] > 2.0 and slow_decision["figures"]["agreement"] == 1.0
    )
    assert [r for r in slow_decision["reasons"] if "p95 latency" in r], slow_decision["reasons"]
    assert tags(stack, slow)["rollout.decision"] == "rolled_back"
    assert "p95 latency" in tags(stack, slow)["rollout.reason"]

    assert (status2, shuffled_decision["decision"]) == (3, "rolled_back"), shuffled_decision
    assert shuffled_decision["figures"]["agreement"] < 0.5
    assert "agreement" in tags(stack, shuffled)["rollout.reason"]
    assert all(production_of(u) == good for u in urls)  # production never moved
