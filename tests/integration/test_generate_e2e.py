"""Generate, all real: --quick training → export → two uvicorn services over a real MLflow server.

One service serves the exported digits bundle (models:/generate@production); the other serves
a tiny Stable Diffusion pipeline this test builds, saves with safetensors and registers.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from shared.registration import register, use_tracking_server
from shared.registry import RegistryClient
from tests.procs import free_port, run_module, running, tail, wait_http
from tests.tinydiffusion import write_sd_bundle

pytestmark = pytest.mark.integration

SCHEDULERS = ["ddpm", "ddim", "dpmsolver++", "euler", "euler-ancestral"]


@dataclass(frozen=True)
class Stack:
    tracking_uri: str
    workdir: Path
    train_log: str
    export_log: str
    digits: str
    sd: str


def register_tiny_sd(tracking_uri: str, workdir: Path) -> None:
    import mlflow

    bundle = write_sd_bundle(workdir / "tiny-sd")
    use_tracking_server(tracking_uri, timeout_s=60, max_retries=3)
    mlflow.set_experiment("generate-sd-test")
    with mlflow.start_run(run_name="tiny stable diffusion"):
        register(bundle, "generate-sd", alias="production")


@pytest.fixture(scope="module")
def stack(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("generate")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    quick = ("--quick", "--threads", "1")
    train_log = run_module("training.generate", *quick, env=env, log=workdir / "train.log")
    export_log = run_module(
        "training.export",
        "generate",
        "--threads",
        "1",
        "--timing-runs",
        "1",
        "--keep-onnx",
        "--cache-dir",
        str(workdir / "export-cache"),
        env=env,
        log=workdir / "export.log",
    )
    register_tiny_sd(mlflow_server, workdir)
    ports = {"digits": free_port(), "sd": free_port()}
    common = {**env, "ONNX_INTRA_OP_THREADS": "1", "LOG_JSON": "true"}
    envs = {
        "digits": {
            **common,
            "MODEL_CACHE_DIR": str(workdir / "cache-digits"),
            "MODEL_VARIANT": "onnx",  # the ONNX UNet path; torch is covered by the unit tests
        },
        "sd": {
            **common,
            "MODEL_CACHE_DIR": str(workdir / "cache-sd"),
            "MODEL_URI": "models:/generate-sd@production",
        },
    }
    cmd = [sys.executable, "-m", "services.generate", "--port"]
    logs = {name: workdir / f"{name}.log" for name in ports}
    with (
        running([*cmd, str(ports["digits"])], logs["digits"], envs["digits"]) as digits,
        running([*cmd, str(ports["sd"])], logs["sd"], envs["sd"]) as sd,
    ):
        for name, proc in (("digits", digits), ("sd", sd)):
            wait_http(f"http://127.0.0.1:{ports[name]}/readyz", proc, logs[name], timeout_s=120)
        yield Stack(
            mlflow_server,
            workdir,
            train_log,
            export_log,
            f"http://127.0.0.1:{ports['digits']}",
            f"http://127.0.0.1:{ports['sd']}",
        )
    for log in logs.values():
        assert "Traceback" not in tail(log, 400), tail(log, 400)


def png(item: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(item["image"])), formats=["PNG"])
    image.load()
    return image


def test_quick_training_logs_quality_sweeps_and_sample_grids(stack: Stack) -> None:
    client = MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)
    version = client.get_model_version_by_alias("generate-torch", "candidate")
    metrics = client.get_run(version.run_id).data.metrics
    for setting in ("guidance_0", "guidance_2", "guidance_7", "dpmsolverpp_1", "ddpm_10"):
        assert 0.0 <= metrics[f"quality.{setting}.recognized"] <= 1.0
        assert metrics[f"quality.{setting}.frechet"] >= 0.0
    assert 0.0 < metrics["judge_test_accuracy"] <= 1.0
    samples = {Path(a.path).name for a in client.list_artifacts(version.run_id, "samples")}
    assert "epoch_002.png" in samples
    assert "registered generate-torch version" in stack.train_log


def recognised(stack: Stack, guidance_scale: float) -> float:
    """Share of served digits (3 per class) that a classifier fitted here on the real train
    digits labels as the class asked for."""
    from sklearn.linear_model import LogisticRegression

    from training.data import load_splits

    splits = load_splits()
    train, test = splits["train"], splits["test"]
    judge = LogisticRegression(max_iter=2000).fit(
        train.images.reshape(len(train.images), -1) / 255, train.labels
    )
    assert judge.score(test.images.reshape(len(test.images), -1) / 255, test.labels) > 0.9
    hits = []
    with httpx.Client(base_url=stack.digits, timeout=60) as http:
        for digit in range(10):
            body = {"class": digit, "num_images": 3, "steps": 10, "seed": 100 * digit}
            response = http.post("/v1/generate", json={**body, "guidance_scale": guidance_scale})
            assert response.status_code == 200, response.text
            pixels = np.stack([np.asarray(png(item)) for item in response.json()["images"]])
            assert pixels.shape == (3, 8, 8)  # the model's native size: the judge's input
            hits.extend(judge.predict(pixels.reshape(3, -1) / 255) == digit)
    return float(np.mean(hits))


def test_generated_digits_are_recognised_far_above_chance(stack: Stack) -> None:
    guided = recognised(stack, guidance_scale=2.0)  # the served default
    unconditional = recognised(stack, guidance_scale=0.0)  # ignores the class: ~chance
    print(f"recognised: guided {guided:.0%}, unconditional {unconditional:.0%}, chance 10%")
    assert guided >= 0.6, guided
    assert guided - unconditional >= 0.4, (guided, unconditional)


def test_export_registers_the_pipeline_bundle_as_production(stack: Stack) -> None:
    client = MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)
    production = client.get_model_version_by_alias("generate", "production")
    candidate = client.get_model_version_by_alias("generate-torch", "candidate")
    assert production.tags["source_version"] == candidate.version
    assert production.tags["gates"] == "passed"
    registry_client = RegistryClient(stack.tracking_uri, timeout_s=60, max_retries=3)
    bundle = registry_client.fetch(
        "models:/generate@production", stack.workdir / "check-cache"
    ).bundle
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors"} <= set(
        bundle.manifest["files"]
    )
    assert bundle.manifest["pipeline"]["class"] == "DigitsDiffusionPipeline"
    assert set(bundle.variants) == {"torch", "onnx"}  # --keep-onnx: in parity, kept either way
    faster = (
        bundle.variants["onnx"]["seconds_per_image"] < bundle.variants["torch"]["seconds_per_image"]
    )
    assert bundle.default_variant == ("onnx" if faster else "torch")
    assert "moved @production" in stack.export_log
    info = httpx.get(f"{stack.digits}/v1/model", timeout=10).json()
    assert info["variant"] == "onnx"


def test_served_digits_have_the_requested_count_and_size(stack: Stack) -> None:
    body = {"prompt": "a handwritten 7", "num_images": 3, "steps": 4, "width": 32, "seed": 1}
    response = httpx.post(f"{stack.digits}/v1/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"]["name"] == "generate" and result["params"]["class"] == 7
    images = [png(item) for item in result["images"]]
    assert [im.size for im in images] == [(32, 32)] * 3
    assert json.loads(images[0].text["parameters"])["seed"] == 1  # type: ignore[attr-defined]


def test_same_seed_same_bytes_and_different_seed_different_images(stack: Stack) -> None:
    body = {"class": 2, "steps": 4, "seed": 42, "scheduler": "ddpm"}
    with httpx.Client(base_url=stack.digits, timeout=60) as http:
        first, again = (http.post("/v1/generate", json=body).json() for _ in range(2))
        other = http.post("/v1/generate", json={**body, "seed": 43}).json()
    assert first["images"][0]["image"] == again["images"][0]["image"]
    a, b = (np.asarray(png(r["images"][0])) for r in (first, other))
    assert not np.array_equal(a, b)


def test_every_listed_scheduler_works_over_http(stack: Stack) -> None:
    with httpx.Client(base_url=stack.digits, timeout=60) as http:
        listed = [s["name"] for s in http.get("/v1/generate/schedulers").json()["schedulers"]]
        assert listed == SCHEDULERS
        for name in listed:
            response = http.post("/v1/generate", json={"class": 0, "steps": 3, "scheduler": name})
            assert response.status_code == 200, (name, response.text)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])


def test_stream_yields_progress_then_images_and_bounds_answer_meanwhile(stack: Stack) -> None:
    body = {"class": 9, "steps": 30, "num_images": 4, "stream": True}
    seen: list[str] = []
    refused: list[httpx.Response] = []
    with (
        httpx.Client(base_url=stack.digits, timeout=120) as http,
        http.stream("POST", "/v1/generate", json=body) as response,
    ):
        assert response.status_code == 200
        for name, data in sse_events(response.iter_lines()):
            seen.append(name)
            if name == "progress" and data["step"] == 1:  # a generation is running now
                check = threading.Thread(
                    target=lambda: refused.append(
                        httpx.post(
                            f"{stack.digits}/v1/generate",
                            json={"class": 1, "steps": 999},
                            timeout=30,
                        )
                    )
                )
                check.start()
                check.join(30)
            if name == "result":
                assert len(data["images"]) == 4
    assert seen[0] == "queued" and seen[-1] == "result"
    assert seen.count("progress") == 30
    assert refused[0].status_code == 422 and "steps" in refused[0].json()["detail"]


def test_tiny_stable_diffusion_end_to_end(stack: Stack) -> None:
    body = {"prompt": "a photo of a blue dog", "width": 40, "height": 24, "steps": 3, "seed": 3}
    response = httpx.post(f"{stack.sd}/v1/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"] == {"name": "generate-sd", "version": "1", "variant": "torch"}
    image = png(result["images"][0])
    assert (image.size, image.mode) == ((40, 24), "RGB")
    not_text = httpx.post(f"{stack.sd}/v1/generate", json={"class": 3}, timeout=30)
    assert not_text.status_code == 422 and "text-to-image" in not_text.json()["detail"]
