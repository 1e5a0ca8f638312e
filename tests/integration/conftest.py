"""A real MLflow tracking server + registry on a free loopback port, for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.procs import BIN, free_port, running, wait_http


@contextmanager
def mlflow_running(root: Path, port: int) -> Iterator[str]:
    """A real MLflow server (SQLite backend, local artifacts under `root`) on `port`, stopped
    by PID on exit; start it again with the same root and port and it has the same models."""
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--expose-prometheus",  # /metrics, as in compose and Kubernetes
        str(root / "metrics"),
    ]
    uri = f"http://127.0.0.1:{port}"
    # The GenAI job runner (a swarm of huey workers) is not needed for tracking + registry.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with running(cmd, root / "mlflow.log", env) as proc:
        wait_http(f"{uri}/health", proc, root / "mlflow.log", timeout_s=120)
        yield uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the tracking URI of a fresh MLflow server shared by the whole session."""
    with mlflow_running(tmp_path_factory.mktemp("mlflow"), free_port()) as uri:
        yield uri
