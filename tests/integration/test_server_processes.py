"""SERVER_PROCESSES: one command, several processes on one port, one metrics scrape each."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests.procs import ROOT, free_port, poll_until, running, tail, wait_http
from tests.tinymodels import seed_cache
from tests.unit.conftest import DEAD_REGISTRY, png_bytes

CLASSIFIED = re.compile(
    r'^modelplane_requests_total\{[^}]*route="/v1/classify"[^}]*status="200"[^}]*\} (\S+)$', re.M
)

READY = 'modelplane_ready{service="classify"} 1.0'


def classified(metrics_url: str) -> int:
    """Successful /v1/classify requests one process counted."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=5).text
    return int(sum(float(value) for value in CLASSIFIED.findall(text)))


def test_two_processes_answer_and_each_counts_its_own_requests(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seed_cache(cache)
    port, metrics = free_port(), free_port()
    while metrics + 1 == port:  # process 1 takes metrics + 1
        metrics = free_port()
    env = {
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,
        "MODEL_CACHE_DIR": str(cache),
        "SERVER_PROCESSES": "2",
        "METRICS_PORT": str(metrics),
        "SHUTDOWN_DRAIN_S": "0",
        "LOG_JSON": "true",
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    log = tmp_path / "service.log"
    with running(cmd, log, env) as proc:
        for scrape in (metrics, metrics + 1):  # every process serves its own scrape
            wait_http(f"http://127.0.0.1:{scrape}/metrics", proc, log, timeout_s=90)
            poll_until(
                lambda s=scrape: READY in httpx.get(f"http://127.0.0.1:{s}/metrics").text,
                90,
                f"process on metrics port {scrape} ready\n{tail(log)}",
            )
        url = f"http://127.0.0.1:{port}"
        body = png_bytes(np.full((8, 8), 200, np.uint8))
        sent = 0
        for _ in range(60):  # a new connection each: the kernel picks a process per connection
            answer = httpx.post(
                f"{url}/v1/classify", content=body, headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200, answer.text
            sent += 1
        counts = [classified(f"http://127.0.0.1:{m}") for m in (metrics, metrics + 1)]
        assert sum(counts) == sent, counts  # one scrape per process adds up to the traffic
        assert all(count > 0 for count in counts), counts  # both processes served
        model = httpx.get(f"{url}/v1/model").json()
        assert model["threads"]["onnx_intra_op"] >= 1

        proc.send_signal(signal.SIGTERM)  # passed on to both; all of them stop
        assert proc.wait(timeout=30) == 0, tail(log)

        def refused() -> bool:
            try:
                httpx.get(f"http://127.0.0.1:{metrics + 1}/metrics", timeout=1)
            except httpx.HTTPError:
                return True
            return False

        poll_until(refused, 10, "the second process gone with the first")


def test_several_processes_need_a_metrics_port(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": DEAD_REGISTRY, "SERVER_PROCESSES": "2"}
    cmd = [sys.executable, "-m", "services.classify", "--port", str(free_port())]
    assert "needs METRICS_PORT" in refusal(cmd, env)


def test_similarity_refuses_several_processes(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": DEAD_REGISTRY, "SERVER_PROCESSES": "2", "METRICS_PORT": "9"}
    cmd = [sys.executable, "-m", "services.similarity", "--port", str(free_port())]
    assert "single_process" in refusal(cmd, env)


def refusal(cmd: list[str], env: dict[str, str]) -> str:
    """Run a service command that must refuse to start; its output."""
    done = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0, done.stdout
    return done.stderr + done.stdout
