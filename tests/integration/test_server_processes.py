"""Several processes on one port: the default layout, metrics of all of them in one scrape."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import numpy as np

from shared.layout import choose_layout, cpu_budget
from tests.procs import free_port, poll_until, running, tail, wait_http
from tests.tinymodels import seed_cache
from tests.unit.conftest import DEAD_REGISTRY, png_bytes

CLASSIFIED = re.compile(
    r'^modelplane_requests_total\{[^}]*route="/v1/classify"[^}]*status="200"[^}]*\} (\S+)$', re.M
)
READY = re.compile(r'^modelplane_ready\{service="classify"\} (\S+)$', re.M)
MODEL_INFO = re.compile(r"^modelplane_model_info\{.*\} (\S+)$", re.M)


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=5).text


def classified(text: str) -> int:
    """Successful /v1/classify requests in one scrape."""
    return int(sum(float(value) for value in CLASSIFIED.findall(text)))


def ready(url: str) -> bool:
    try:
        return [float(v) for v in READY.findall(scrape(url))] == [1.0]
    except httpx.HTTPError:
        return False


def start(
    tmp_path: Path, processes: str, metrics_port: int | None = None
) -> tuple[list[str], Path, dict[str, str], str]:
    cache = tmp_path / "cache"
    seed_cache(cache)
    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,
        "MODEL_CACHE_DIR": str(cache),
        "SERVER_PROCESSES": processes,
        "SHUTDOWN_DRAIN_S": "0",
        "LOG_JSON": "true",
        "TMPDIR": str(tmp_path),  # where the supervisor makes its metrics directory
        **({"METRICS_PORT": str(metrics_port)} if metrics_port else {}),
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    return cmd, tmp_path / "service.log", env, f"http://127.0.0.1:{port}"


def classify_on_new_connections(url: str, count: int) -> list[int]:
    """`count` classifications, each on a new connection (the kernel picks a process per
    connection); the process index that answered GET /v1/model on each."""
    body = png_bytes(np.full((8, 8), 200, np.uint8))
    indices = []
    for _ in range(count):
        kind = {"content-type": "image/png"}
        answer = httpx.post(f"{url}/v1/classify", content=body, headers=kind)
        assert answer.status_code == 200, answer.text
        indices.append(httpx.get(f"{url}/v1/model").json()["layout"]["process_index"])
    return indices


def every_process_answering(url: str, processes: int, log: Path) -> None:
    """Until GET /v1/model, each on a new connection, has come from every process (each
    joins the port once its models are ready)."""
    seen: set[int] = set()

    def all_seen() -> bool:
        seen.add(httpx.get(f"{url}/v1/model").json()["layout"]["process_index"])
        return len(seen) == processes

    poll_until(all_seen, 90, f"answers from {processes} processes\n{tail(log)}")


def metrics_dirs(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob("modelplane-metrics-*"))


def test_two_processes_share_the_port_and_one_scrape_counts_them_all(tmp_path: Path) -> None:
    cmd, log, env, url = start(tmp_path, "2")
    with running(cmd, log, env) as proc:
        wait_http(f"{url}/readyz", proc, log, timeout_s=90)
        every_process_answering(url, 2, log)
        assert ready(url)  # the least over the live processes: 1 once both have loaded
        assert len(metrics_dirs(tmp_path)) == 1
        indices = classify_on_new_connections(url, 40)
        assert set(indices) == {0, 1}, indices  # both processes served
        for _ in range(6):  # whichever process answers the scrape reads every process's files
            text = scrape(url)
            assert classified(text) == 40, text
            assert [float(v) for v in MODEL_INFO.findall(text)] == [1.0]  # livemax: one model
        model = httpx.get(f"{url}/v1/model").json()
        assert (model["layout"]["processes"], model["layout"]["chosen_by"]) == (2, "settings")
        assert model["threads"]["onnx_intra_op"] == model["layout"]["intra_op_threads"] >= 1

        proc.send_signal(signal.SIGTERM)  # passed on to both; all of them stop
        assert proc.wait(timeout=30) == 0, tail(log)
    assert metrics_dirs(tmp_path) == [], "the metrics directory outlived the instance"


def test_the_default_layout_and_the_metrics_port_of_the_supervisor(tmp_path: Path) -> None:
    metrics_port = free_port()
    cmd, log, env, url = start(tmp_path, "0", metrics_port)
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    with running(cmd, log, env) as proc:
        wait_http(f"{url}/readyz", proc, log, timeout_s=90)
        expected = choose_layout(cpu_budget()).to_dict()
        every_process_answering(url, expected["processes"], log)
        assert ready(metrics_url)
        layout = httpx.get(f"{url}/v1/model").json()["layout"]
        assert {key: layout[key] for key in expected} == expected
        classify_on_new_connections(url, 12)
        assert classified(scrape(metrics_url)) == 12
        assert httpx.get(f"{url}/metrics").status_code == 404  # only on METRICS_PORT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, tail(log)

    def refused() -> bool:
        try:
            httpx.get(f"{metrics_url}/metrics", timeout=1)
        except httpx.HTTPError:
            return True
        return False

    poll_until(refused, 10, "the metrics port closed with the instance")


def test_similarity_refuses_several_processes(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": DEAD_REGISTRY, "SERVER_PROCESSES": "2"}
    cmd = [sys.executable, "-m", "services.similarity", "--port", str(free_port())]
    log = tmp_path / "similarity.log"
    with running(cmd, log, env) as proc:
        assert proc.wait(timeout=60) != 0
    assert "single_process" in log.read_text()


STUBBORN = (  # ignores SIGTERM and waits for signals until one ends it (SIGKILL)
    "import os, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('child', os.getpid(), flush=True)\nwhile True: signal.pause()"
)
SUPERVISOR = """
import logging, sys
from shared.layout import Layout
from shared.settings import ServingSettings
from shared.supervisor import run_children
logging.basicConfig(level=logging.INFO)
layout = Layout(cores=2, processes=2, intra_op_threads=1, inference_workers=1, chosen_by="test")
command = [sys.executable, "-c", sys.argv[1]]
sys.exit(run_children(command, ServingSettings(), layout, sys.argv[2], stop_within_s=1.0))
"""


def test_the_supervisor_kills_a_process_that_ignores_the_stop_signal(tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    cmd = [sys.executable, "-c", SUPERVISOR, STUBBORN, str(tmp_path)]
    pids: list[int] = []
    try:
        with running(cmd, log) as proc:

            def both_started() -> list[int] | None:
                found = [int(pid) for pid in re.findall(r"^child (\d+)$", log.read_text(), re.M)]
                return found if len(found) == 2 else None

            pids = poll_until(both_started, 30, "both children started")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == signal.SIGKILL, tail(log)  # not a clean stop
            assert log.read_text().count("did not stop within 1s: killed") == 2, tail(log)
        for pid in pids:  # killed and reaped by the supervisor
            assert not Path(f"/proc/{pid}").exists()
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
