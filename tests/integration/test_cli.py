"""The `modelplane` console command, run as a user runs it (the installed entry point): help
everywhere, one-line errors, `serve` as a real service process, `models` against a real
MLflow registry and a running service."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import mlflow
import pytest

from shared.registration import register, use_tracking_server
from tests.procs import BIN, ROOT, free_port, running, wait_http
from tests.tinymodels import digit_png, seed_cache, write_tiny_bundle

pytestmark = pytest.mark.integration

MODELPLANE = str(BIN / "modelplane")
DEAD_REGISTRY = "http://127.0.0.1:9"


def modelplane(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODELPLANE, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def subcommands() -> list[str]:
    from modelplane.cli import main

    return sorted(main.commands)


def test_every_subcommand_has_help() -> None:
    top = modelplane("--help")
    assert top.returncode == 0
    for name in subcommands():
        assert name in top.stdout
        shown = modelplane(name, "--help")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"Usage: modelplane {name}"), shown.stdout[:200]


def test_pass_through_help_is_the_jobs_own() -> None:
    """Options after the task go to the job: its own argparse help, not modelplane's."""
    shown = modelplane("train", "classify", "--help")
    assert shown.returncode == 0
    assert "python -m training.classify" in shown.stdout and "--epochs" in shown.stdout


def test_every_job_takes_quick() -> None:
    """`modelplane export all --quick` (and `up`) pass --quick to every export: each accepts
    it (the training jobs' --quick is run by their own tests)."""
    for task in ("classify", "similarity", "text-classify", "text-generate", "generate"):
        shown = modelplane("export", task, "--help")
        assert shown.returncode == 0 and "--quick" in shown.stdout, task


def test_study_help_lists_every_study_with_its_summary() -> None:
    from training.studies import STUDIES

    shown = modelplane("study", "--help")
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout.split("NAME:", 1)[1]
    for name, module in STUDIES.items():
        summary = importlib.import_module(module).__doc__.splitlines()[0]
        assert f"  {name}" in listed and summary[:40] in " ".join(listed.split()), name
    unknown = modelplane("study", "nope")
    assert unknown.returncode != 0 and "unknown study 'nope'" in unknown.stderr


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    unknown = one_line_error(modelplane("train", "clasify"))
    assert "unknown task 'clasify'" in unknown and "classify" in unknown

    for args in (("train", "classify", "--quick"), ("export", "all"), ("models",)):
        down = one_line_error(modelplane(*args, env={"MLFLOW_TRACKING_URI": DEAD_REGISTRY}))
        assert f"cannot reach the MLflow registry at {DEAD_REGISTRY}" in down, args

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = one_line_error(modelplane("serve", "classify", "--port", str(port)))
    assert f"port {port} on 127.0.0.1 is in use" in busy

    setting = one_line_error(modelplane("serve", "classify", "--set", "max_batchsize=4"))
    assert "max_batchsize=4" in setting and "max_batch_size" in setting


def test_serve_runs_the_service_with_its_flags(tmp_path: Path) -> None:
    """`modelplane serve` becomes the service process (same PID: signals reach it), with
    flags and --set settings applied."""
    seed_cache(tmp_path / "cache", fitted=True)
    port = free_port()
    cmd = [
        MODELPLANE, "serve", "classify", "--port", str(port), "--tracking-uri", DEAD_REGISTRY,
        "--threads", "1", "--set", "max_batch_size=3", "--set", "MODEL_CACHE_DIR=" +
        str(tmp_path / "cache"),
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with running(cmd, log, {"LOG_LEVEL": "WARNING"}) as proc:
        wait_http(f"{url}/readyz", proc, log, timeout_s=120)
        png, label = digit_png(0)
        answer = httpx.post(
            f"{url}/v1/classify", content=png, headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200
        assert answer.json()["predictions"][0]["label"] == str(label)
        described = httpx.get(f"{url}/v1/model").text
        assert '"max_batch_size":3' in described.replace(" ", "")
        proc.send_signal(signal.SIGTERM)  # uvicorn re-raises it after its graceful shutdown
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):  # no orphan left serving
            httpx.get(f"{url}/livez")


def test_models_lists_the_registry_and_what_services_serve(
    mlflow_server: str, tmp_path: Path
) -> None:
    use_tracking_server(mlflow_server)
    mlflow.set_experiment("cli-models")
    with mlflow.start_run():
        version = register(
            write_tiny_bundle(tmp_path / "bundle", name="cli-tiny"),
            "cli-tiny",
            alias="production",
            tags={"gates": "passed", "variants": "fp32"},
        )
    seed_cache(tmp_path / "cache")
    port = free_port()
    cmd = [MODELPLANE, "serve", "classify", "--port", str(port)]
    env = {"MLFLOW_TRACKING_URI": DEAD_REGISTRY, "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    nothing_there = f"http://127.0.0.1:{free_port()}"
    with running(cmd, tmp_path / "serve.log", env) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, tmp_path / "serve.log", 120)
        listed = modelplane(
            "models",
            env={
                "MLFLOW_TRACKING_URI": mlflow_server,
                "CLASSIFY_URL": f"http://127.0.0.1:{port}",
                "SIMILARITY_URL": nothing_there,
            },
        )
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert ["cli-tiny", version, "production", "passed", "fp32"] in [r[:5] for r in rows]
    assert ["classify", f"http://127.0.0.1:{port}", "classify", "v1", "(fp32)"] in rows
    assert ["similarity", nothing_there, "not", "running"] in rows
