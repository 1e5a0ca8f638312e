"""SIGTERM while a request is in flight: the request still gets its answer, new connections are
refused, and the process exits cleanly within the graceful timeout."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import httpx

from tests.procs import free_port, poll_until, running, wait_http
from tests.tinydiffusion import tiny_stable_diffusion
from tests.unit.conftest import DEAD_REGISTRY


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    pipeline_dir = tiny_stable_diffusion(tmp_path / "pipeline")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "GENERATE_PIPELINE_DIR": str(pipeline_dir),
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,
        "MODEL_CACHE_DIR": str(tmp_path / "unused-cache"),
        "ONNX_INTRA_OP_THREADS": "1",
    }
    log = tmp_path / "generate.log"
    cmd = [sys.executable, "-m", "services.generate", "--port", str(port)]
    with running(cmd, log, env) as proc:
        wait_http(f"{url}/readyz", proc, log, timeout_s=120)
        request = {"prompt": "a cat", "width": 32, "height": 32, "steps": 40, "seed": 1}
        httpx.post(f"{url}/v1/generate", json={**request, "steps": 2}, timeout=60)  # warm
        answers: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{url}/v1/generate", json=request, timeout=120)
            )
        )
        slow.start()
        poll_until(  # the warm-up was batch 1: the second batch is this generation, under way
            lambda: (
                'modelplane_batch_size_count{service="generate"} 2.0'
                in httpx.get(f"{url}/metrics", timeout=5).text
            ),
            30,
            "the generation started",
        )
        proc.send_signal(signal.SIGTERM)

        def no_longer_ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 503
            except httpx.HTTPError:
                return True  # refused: the listening socket is closed

        poll_until(no_longer_ready, 5, "readiness withdrawn after SIGTERM")
        slow.join(timeout=60)
        assert answers and answers[0].status_code == 200, answers[0].text if answers else "none"
        assert len(answers[0].json()["images"]) == 1
        # exits by itself within the timeout; uvicorn re-raises the signal once drained
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log.read_text()  # the lifespan ran to its end
