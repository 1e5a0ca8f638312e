"""Zero-downtime model swap: the alias moves under load, the service follows with no failed
request; a new version that fails its smoke test never replaces the serving one."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from shared.bundle import read_manifest, write_manifest
from shared.registration import register, use_tracking_server
from tests.procs import free_port, poll_until, running, wait_http
from tests.tinymodels import write_tiny_bundle
from tests.unit.conftest import png_bytes

pytestmark = pytest.mark.integration
NAME = "swap"


class Load:
    """Sequential requests in a thread, each answer's status and model version kept in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = png_bytes(np.full((8, 8), 180, np.uint8))
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                answer = client.post(
                    f"{self.url}/v1/classify", content=body, headers={"content-type": "image/png"}
                )
                version = answer.json()["model"]["version"] if answer.status_code == 200 else ""
                self.answers.append((answer.status_code, version))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def wait_for_version(url: str, version: str, timeout_s: float = 60) -> None:
    poll_until(
        lambda: httpx.get(f"{url}/v1/model", timeout=5).json()["version"] == version,
        timeout_s,
        f"serving version {version}",
    )


def load_failures(url: str) -> float:
    """modelplane_model_load_failures_total of the service at `url`."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("modelplane_model_load_failures_total{"):
            return float(line.split()[-1])
    return 0.0


def broken_bundle(directory: Path) -> Path:
    """A well-formed, checksummed bundle whose smoke test cannot pass (wrong expected outputs)."""
    write_tiny_bundle(directory, name=NAME, seed=3)
    expected = directory / "expected_outputs.fp32.npy"
    np.save(expected, np.load(expected) + 1.0)
    write_manifest(directory, read_manifest(directory))  # re-checksummed: only the smoke fails
    return directory


def test_alias_move_under_load_swaps_without_a_failed_request(
    mlflow_server: str, tmp_path: Path
) -> None:
    use_tracking_server(mlflow_server)
    mlflow.set_experiment("swap-test")
    with mlflow.start_run():
        v1 = register(
            write_tiny_bundle(tmp_path / "v1", name=NAME, seed=1), NAME, alias="production"
        )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MODEL_URI": f"models:/{NAME}@production",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "RELOAD_INTERVAL_S": "0.3",
        "ONNX_INTRA_OP_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    with running(cmd, tmp_path / "service.log", env) as proc:
        wait_http(f"{url}/readyz", proc, tmp_path / "service.log")
        with Load(url) as load:
            poll_until(lambda: len(load.answers) >= 10, 30, "answers from version 1")
            with mlflow.start_run():
                v2 = register(
                    write_tiny_bundle(tmp_path / "v2", name=NAME, seed=2), NAME, alias="production"
                )
            wait_for_version(url, v2)
            served = len(load.answers)
            poll_until(lambda: len(load.answers) >= served + 10, 30, "answers after the switch")
        statuses = {status for status, _ in load.answers}
        versions = [version for _, version in load.answers]
        assert statuses == {200}, f"failed requests across the swap: {statuses}"
        assert versions[0] == v1 and versions[-1] == v2
        switched_at = versions.index(v2)
        assert set(versions[switched_at:]) == {v2}  # switched once, atomically
        metrics = httpx.get(f"{url}/metrics").text
        assert (
            f'modelplane_model_info{{name="{NAME}",service="classify",variant="fp32",'
            f'version="{v2}"}} 1.0' in metrics
        )

        with mlflow.start_run():
            v3 = register(broken_bundle(tmp_path / "v3"), NAME, alias="production")
        client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        assert client.get_model_version_by_alias(NAME, "production").version == v3
        poll_until(lambda: load_failures(url) >= 1, 30, "the broken version tried")
        assert httpx.get(f"{url}/v1/model").json()["version"] == v2  # the old one still serves
        answer = httpx.post(
            f"{url}/v1/classify",
            content=png_bytes(np.zeros((8, 8), np.uint8)),
            headers={"content-type": "image/png"},
        )
        assert answer.status_code == 200 and answer.json()["model"]["version"] == v2
