"""Registry outages against a real MLflow server that the test stops and restarts on its port.

Cold cache, registry down: the service is live, not ready, says why in /readyz, keeps retrying
(no crash loop) and is ready within seconds of the registry coming back. MLflow killed while
serving: no failed inference. Warm cache, registry down (refusing, or accepting connections and
never answering): a fresh process starts from the verified cache. The start-up figures are
printed (`pytest -s`); the bounds asserted are generous, they catch a hang, not a slowdown.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from shared.registration import register, use_tracking_server
from tests.integration.conftest import mlflow_running
from tests.procs import free_port, poll_until, readyz_saying, running, wait_http
from tests.tinymodels import write_tiny_bundle
from tests.unit.conftest import png_bytes

pytestmark = pytest.mark.integration
NAME = "outage"
PNG = png_bytes(np.full((8, 8), 90, np.uint8))


def service_env(registry: str, cache: Path) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": registry,
        "MODEL_URI": f"models:/{NAME}@production",
        "MODEL_CACHE_DIR": str(cache),
        "LOAD_RETRY_MAX_S": "1",
        "REGISTRY_TIMEOUT_S": "2",
        "ONNX_INTRA_OP_THREADS": "1",
    }


def load_failures(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("modelplane_model_load_failures_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def classify(url: str) -> int:
    headers = {"content-type": "image/png"}
    return httpx.post(f"{url}/v1/classify", content=PNG, headers=headers, timeout=30).status_code


def start_from_cache(registry: str, cache: Path, log: Path) -> tuple[float, dict]:
    """A fresh service process with the registry unusable: seconds to ready, /v1/model."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    started = time.monotonic()
    with running(cmd, log, service_env(registry, cache)) as proc:
        wait_http(f"{url}/readyz", proc, log, timeout_s=60)
        seconds = time.monotonic() - started
        return seconds, httpx.get(f"{url}/v1/model").json()


def test_outages_never_fail_requests_and_recovery_takes_seconds(tmp_path: Path) -> None:
    root, port = tmp_path / "mlflow", free_port()
    root.mkdir()
    with mlflow_running(root, port) as registry:
        use_tracking_server(registry)
        mlflow.set_experiment("outage")
        with mlflow.start_run():
            bundle = write_tiny_bundle(tmp_path / "b", name=NAME)
            version = register(bundle, NAME, alias="production")
    # the registry is down now, and the service's cache is empty
    cache, log = tmp_path / "cache", tmp_path / "service.log"
    service_port = free_port()
    url = f"http://127.0.0.1:{service_port}"
    cmd = [sys.executable, "-m", "services.classify", "--port", str(service_port)]
    with running(cmd, log, service_env(registry, cache)) as proc:
        wait_http(f"{url}/livez", proc, log)  # live at once, whatever the registry does
        poll_until(lambda: readyz_saying(url, "no cached copy"), 60, "the reason in /readyz")
        poll_until(lambda: load_failures(url) >= 3, 60, "three load retries")
        assert proc.poll() is None, "the service exited instead of retrying"
        with mlflow_running(root, port):
            back = time.monotonic()
            poll_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "ready")
            cold_ready_s = time.monotonic() - back
            assert httpx.get(f"{url}/v1/model").json()["version"] == version
        # MLflow has been killed (SIGTERM to its process group); inference does not notice
        statuses = [classify(url) for _ in range(50)]
        assert statuses == [200] * 50
        assert proc.poll() is None

    refused_s, info = start_from_cache(registry, cache, tmp_path / "warm-refused.log")
    assert info["from_cache_only"] is True and info["version"] == version
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}"
        hanging_s, info = start_from_cache(hanging, cache, tmp_path / "warm-hanging.log")
    assert info["from_cache_only"] is True and info["version"] == version
    print(
        f"\nregistry outage figures: cold cache ready {cold_ready_s:.1f}s after MLflow came back; "
        f"warm cache start with the registry refusing {refused_s:.1f}s, "
        f"not answering {hanging_s:.1f}s (REGISTRY_TIMEOUT_S=2)"
    )
    assert hanging_s < 45, "a silent registry blocked the start for too long"
