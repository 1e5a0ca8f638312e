"""REUSE_PORT: two service processes share one port and the kernel spreads connections."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from tests.procs import free_port, running, wait_http
from tests.tinymodels import seed_cache
from tests.unit.conftest import DEAD_REGISTRY, png_bytes


def test_two_processes_serve_one_port(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seed_cache(cache)  # served from the verified cache: the registry is unreachable
    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,
        "MODEL_CACHE_DIR": str(cache),
        "ONNX_INTRA_OP_THREADS": "1",
        "REUSE_PORT": "true",
        "LOG_JSON": "true",
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with ExitStack() as stack:
        procs = [stack.enter_context(running(cmd, log, env)) for log in logs]
        for proc, log in zip(procs, logs, strict=True):
            wait_http(f"http://127.0.0.1:{port}/livez", proc, log, timeout_s=60)
        body = png_bytes(np.full((8, 8), 200, np.uint8))
        url = f"http://127.0.0.1:{port}/v1/classify"
        for _ in range(40):  # a new connection each: the kernel picks a process per connection
            answer = httpx.post(url, content=body, headers={"content-type": "image/png"})
            assert answer.status_code in (200, 503), answer.text  # 503 until both are ready
        assert all(proc.poll() is None for proc in procs)  # neither failed to bind
        served = [log.read_text().count('"route": "/v1/classify"') for log in logs]
        assert all(count > 0 for count in served), served
