"""SIGTERM while a request is in flight: the request still gets its answer, new connections are
refused, and the process exits cleanly within the graceful timeout. With a drain window
(SHUTDOWN_DRAIN_S), /readyz turns 503 at once while new connections are still answered. Under
closed-loop load (loadtests/shutdown.py, `pytest -s` prints its table), no request whose bytes
reached a service goes unanswered, for one process and for processes sharing a port."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from loadtests.shutdown import KINDS, Result, report, shutdowns
from shared.serve import GRACEFUL_TIMEOUT_S
from tests.procs import poll_until, readyz_saying
from tests.tinydiffusion import tiny_stable_diffusion
from tests.tinymodels import seed_cache
from tests.tinyserve import serve_cached
from tests.unit.conftest import png_bytes


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    pipeline_dir = tiny_stable_diffusion(tmp_path / "pipeline")
    env = {"GENERATE_PIPELINE_DIR": str(pipeline_dir), "LOG_LEVEL": "INFO"}
    log = tmp_path / "generate.log"
    with serve_cached("generate", tmp_path / "unused-cache", log, env) as served:
        url, proc = served.url, served.proc
        request = {"prompt": "a cat", "width": 32, "height": 32, "steps": 40, "seed": 1}
        httpx.post(f"{url}/v1/generate", json={**request, "steps": 2}, timeout=60)  # warm
        answers: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{url}/v1/generate", json=request, timeout=120)
            )
        )
        slow.start()
        started = (  # the warm-up left its queue stage first: the second is this generation's
            'modelplane_stage_duration_seconds_count{route="/v1/generate",service="generate",'
            'stage="queue"} 2.0'
        )
        poll_until(
            lambda: started in httpx.get(f"{url}/metrics", timeout=5).text,
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


def test_sigterm_withdraws_readiness_and_keeps_answering_during_the_drain(tmp_path: Path) -> None:
    seed_cache(tmp_path / "cache")
    drain_s = 2.0
    log = tmp_path / "classify.log"
    body = png_bytes(np.full((8, 8), 60, np.uint8))
    env = {"SHUTDOWN_DRAIN_S": str(drain_s), "LOG_LEVEL": "INFO"}
    with serve_cached("classify", tmp_path / "cache", log, env) as served:
        url, proc = served.url, served.proc
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        refused = poll_until(lambda: readyz_saying(url, "shutting down"), 1.5, "503 at once")
        assert refused.status_code == 503
        with httpx.Client() as fresh:  # a new connection inside the window is still served
            answer = fresh.post(
                f"{url}/v1/classify", content=body, headers={"content-type": "image/png"}
            )
        assert answer.status_code == 200 and time.monotonic() - signalled < drain_s
        assert proc.wait(timeout=drain_s + 15) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled >= drain_s  # it did wait out the window
    assert "Application shutdown complete" in log.read_text()


def assert_nothing_lost(result: Result, processes: int) -> None:
    print(report(result, processes))  # the figures, with pytest -s
    tally = result.tally
    for kind in KINDS:
        sent = tally.total(kind) - tally.count(kind, "refused")
        assert sent > 0, f"{kind}: no request in any shutdown window"
        assert tally.count(kind, "lost") == 0 and tally.count(kind, "error") == 0, tally.errors
    assert max(result.seconds) < GRACEFUL_TIMEOUT_S, result.seconds


def test_no_request_is_lost_over_20_shutdowns_with_the_defaults(tmp_path: Path) -> None:
    """Keep-alive and connection-per-request clients in a closed loop, SIGTERM, 20 times: every
    request sent is answered; connections after the stop are refused, never reset."""
    seed_cache(tmp_path / "cache")
    result = shutdowns(tmp_path / "cache", tmp_path / "classify.log", rounds=20, processes=1)
    assert_nothing_lost(result, 1)
    # after the exit nobody listens: clients were refused (cleanly), and the test saw it
    assert sum(result.tally.count(kind, "refused") for kind in KINDS) > 0


def test_no_request_is_lost_over_20_rolling_restarts_on_a_shared_port(tmp_path: Path) -> None:
    """Two processes on one port (REUSE_PORT); the oldest gets SIGTERM and a replacement
    joins once ready, 20 times: nothing lost and nothing even refused (the other one serves)."""
    seed_cache(tmp_path / "cache")
    result = shutdowns(tmp_path / "cache", tmp_path / "classify.log", rounds=20, processes=2)
    assert_nothing_lost(result, 2)
    assert sum(result.tally.count(kind, "refused") for kind in KINDS) == 0, result.tally.errors
