"""The generate service in process: a fresh app per test over a tiny digits pipeline bundle."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.generate.pipelines import Generator, Job
from services.generate.safety import SafetyChecker
from services.generate.service import GenerateModel, GenerateService
from shared.app import create_app
from shared.service import Call, ModelSpec
from shared.settings import ServingSettings
from tests.procs import poll_until
from tests.sse import parse_sse
from tests.tinydiffusion import seed_cache
from tests.unit.conftest import DEAD_REGISTRY, wait_ready

SCHEDULERS = ["ddpm", "ddim", "dpmsolver++", "euler", "euler-ancestral"]


@pytest.fixture(scope="module")
def generate_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("generate-cache")
    seed_cache(cache)
    return cache


def make_settings(cache: Path, **overrides: Any) -> ServingSettings:
    values = {
        "mlflow_tracking_uri": DEAD_REGISTRY,
        "model_cache_dir": cache,
        "onnx_intra_op_threads": 1,
        "max_batch_size": 1,
        "max_queue": 4,
        "request_timeout_s": 60,
        "log_json": False,
        **overrides,
    }
    return ServingSettings(**values)


@pytest.fixture
def client(generate_cache: Path) -> Iterator[TestClient]:
    with TestClient(create_app(GenerateService, make_settings(generate_cache))) as test_client:
        wait_ready(test_client, timeout_s=60)
        yield test_client


def decode(item: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(item["image"])))
    image.load()
    return image


def test_generate_returns_the_requested_pngs_of_the_requested_size(client: TestClient) -> None:
    response = client.post(
        "/v1/generate", json={"class": 3, "num_images": 3, "steps": 4, "width": 32, "seed": 11}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "generate", "version": "1", "variant": "torch"}
    assert [item["seed"] for item in body["images"]] == [11, 12, 13]
    for item in body["images"]:
        image = decode(item)
        assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "L")
    assert body["params"]["class"] == 3 and body["params"]["scheduler"] == "dpmsolver++"
    assert body["params"]["guidance_scale"] == 2.0  # the bundle's default
    assert body["safety"] == {"checker": None, "ran": False}
    assert set(body["timing_ms"]) == {"queue", "generate", "encode", "total"}


def test_same_seed_gives_identical_bytes_and_another_seed_other_images(client: TestClient) -> None:
    request = {"class": 5, "steps": 5, "seed": 1234, "scheduler": "euler-ancestral"}
    first = client.post("/v1/generate", json=request).json()["images"][0]["image"]
    again = client.post("/v1/generate", json=request).json()["images"][0]["image"]
    other = client.post("/v1/generate", json={**request, "seed": 99}).json()["images"][0]
    assert first == again
    assert not np.array_equal(np.asarray(decode({"image": first})), np.asarray(decode(other)))


def test_every_listed_scheduler_generates(client: TestClient) -> None:
    listed = client.get("/v1/generate/schedulers").json()
    assert [s["name"] for s in listed["schedulers"]] == SCHEDULERS
    assert listed["steps"] == {"default": 25, "min": 1, "max": 150}
    assert listed["num_images"]["max"] == 4 and listed["default_scheduler"] == "dpmsolver++"
    for name in SCHEDULERS:
        response = client.post("/v1/generate", json={"class": 1, "steps": 3, "scheduler": name})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["params"]["scheduler"] == name
    alias = client.post("/v1/generate", json={"class": 1, "steps": 2, "scheduler": "DPM-Solver++"})
    assert alias.json()["params"]["scheduler"] == "dpmsolver++"


def test_png_carries_provenance_and_jpeg_a_comment(client: TestClient) -> None:
    body = client.post("/v1/generate", json={"prompt": "seven", "steps": 2, "seed": 5}).json()
    text = decode(body["images"][0]).text  # type: ignore[attr-defined]
    assert json.loads(text["model"]) == body["model"]
    params = json.loads(text["parameters"])
    assert params["seed"] == 5 and params["class"] == 7 and params["steps"] == 2
    assert text["Software"] == "modelplane generate"
    jpeg = client.post("/v1/generate", json={"class": 2, "steps": 2, "format": "jpeg"}).json()
    image = decode(jpeg["images"][0])
    assert image.format == "JPEG"
    assert json.loads(json.loads(image.info["comment"])["model"]) == jpeg["model"]


@pytest.mark.parametrize("prompt", ["a handwritten 7", "seven", "7", "The digit SEVEN, please"])
def test_prompts_naming_a_digit_map_to_its_class(client: TestClient, prompt: str) -> None:
    response = client.post("/v1/generate", json={"prompt": prompt, "steps": 1})
    assert response.status_code == 200, response.text
    assert response.json()["params"]["class"] == 7


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"class": 1, "num_images": 5}, "num_images"),
        ({"class": 1, "steps": 151}, "steps"),
        ({"class": 1, "steps": 0}, "steps"),
        ({"class": 1, "guidance_scale": 31}, "guidance_scale"),
        ({"class": 1, "scheduler": "heun9000"}, "scheduler"),
        ({"class": 1, "width": 20}, "width"),
        ({"class": 1, "width": 2048}, "width"),
        ({"class": 1, "seed": -1}, "seed"),
        ({"class": 10}, "class"),
        ({"class": 1, "guidance": 3}, "guidance"),
        ({"prompt": "a cat"}, "prompt"),
        ({"prompt": "3 or 4"}, "prompt"),
        ({"class": 1, "prompt": "one"}, "exactly one of"),
        ({"class": 1, "format": "gif"}, "format"),
    ],
)
def test_out_of_bound_parameters_are_422_naming_the_bound(
    client: TestClient, body: dict[str, Any], named: str
) -> None:
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert named in response.json()["detail"]


def test_unparseable_prompt_says_what_is_accepted(client: TestClient) -> None:
    detail = client.post("/v1/generate", json={"prompt": "a cat"}).json()["detail"]
    assert "names no digit" in detail and "'a handwritten 7', 'seven' or '7'" in detail


def test_non_json_body_is_415(client: TestClient) -> None:
    response = client.post(
        "/v1/generate", content=b"class=3", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415


def test_stream_sends_progress_events_then_the_images(client: TestClient) -> None:
    request = {"class": 4, "steps": 6, "seed": 3, "stream": True, "preview_every": 2}
    with client.stream("POST", "/v1/generate", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.read().decode())
    names = [name for name, _ in events]
    assert names == ["queued"] + ["progress"] * 6 + ["result"]
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]
    previews = [data for name, data in events if name == "progress" and "preview" in data]
    assert [p["step"] for p in previews] == [2, 4, 6]
    assert decode({"image": previews[0]["preview"]}).size == (8, 8)
    result = events[-1][1]
    plain = client.post("/v1/generate", json={**request, "stream": False}).json()
    assert result["images"] == plain["images"]  # the same generation either way


class GatedModel(GenerateModel):
    """A generation waits for the test to open the gate: deterministic 'one is running'."""

    def generate(self, job: Job, call: Call) -> dict[str, Any]:
        GatedService.entered.set()
        GatedService.gate.wait(30)
        return super().generate(job, call)


class GatedService(GenerateService):
    models = (ModelSpec("generate", GatedModel, "generate"),)
    entered = threading.Event()
    gate = threading.Event()


def queue_depth(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("modelplane_queue_depth{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_one_generation_at_a_time_full_queue_is_503_and_bounds_answer_at_once(
    generate_cache: Path,
) -> None:
    GatedService.entered.clear()
    GatedService.gate.clear()
    settings = make_settings(generate_cache, max_queue=1)
    results: list[int] = []
    with TestClient(create_app(GatedService, settings)) as client:
        wait_ready(client, timeout_s=60)
        GatedService.gate.set()  # warm-up passed; now hold the next generation
        GatedService.gate.clear()

        def post() -> None:
            results.append(client.post("/v1/generate", json={"class": 1, "steps": 2}).status_code)

        running = threading.Thread(target=post)
        running.start()
        assert GatedService.entered.wait(30)
        queued = threading.Thread(target=post)
        queued.start()
        poll_until(lambda: queue_depth(client) >= 1, 30, "the second request queued")
        full = client.post("/v1/generate", json={"class": 1, "steps": 2})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "queue is full" in full.json()["detail"]
        bad = client.post("/v1/generate", json={"class": 1, "steps": 1000})
        assert bad.status_code == 422 and "steps" in bad.json()["detail"]
        assert not results  # both accepted requests are still waiting on the gate
        GatedService.gate.set()
        running.join(30)
        queued.join(30)
    assert results == [200, 200]


class FlagAll:
    """A plugged-in checker that withholds every image."""

    name = "flag-all"

    def check(self, images: list[np.ndarray], params: dict[str, Any], flags: Any) -> list[bool]:
        return [True] * len(images)


class CheckedModel(GenerateModel):
    def make_safety_checker(self, generator: Generator) -> SafetyChecker:
        return FlagAll()


class CheckedService(GenerateService):
    models = (ModelSpec("generate", CheckedModel, "generate"),)


def test_a_plugged_in_safety_checker_runs_and_withholds_images(generate_cache: Path) -> None:
    with TestClient(create_app(CheckedService, make_settings(generate_cache))) as client:
        wait_ready(client, timeout_s=60)
        body = client.post("/v1/generate", json={"class": 8, "steps": 3, "num_images": 2}).json()
        assert body["safety"] == {"checker": "flag-all", "ran": True}
        for item in body["images"]:
            assert item["flagged"] is True
            assert not np.asarray(decode(item)).any()  # withheld: black
        assert client.get("/v1/model").json()["safety_checker"] == "flag-all"


def test_request_timeout_stops_a_generation_between_steps(generate_cache: Path) -> None:
    settings = make_settings(generate_cache, request_timeout_s=0.05)
    with TestClient(create_app(GenerateService, settings)) as client:
        wait_ready(client, timeout_s=60)
        response = client.post("/v1/generate", json={"class": 1, "steps": 150, "num_images": 4})
        assert response.status_code == 504
        assert response.json()["code"] == "deadline_exceeded"
        streamed = client.post(
            "/v1/generate", json={"class": 1, "steps": 150, "num_images": 4, "stream": True}
        )
        name, data = parse_sse(streamed.text)[-1]
        assert name == "error" and data["code"] == "deadline_exceeded"
        assert "request timeout of 0.05s" in data["detail"]
