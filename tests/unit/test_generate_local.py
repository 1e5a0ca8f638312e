"""GENERATE_PIPELINE_DIR: a tiny Stable Diffusion pipeline served from a local directory."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.generate.service import GenerateService, GenerateSettings
from shared.app import create_app
from shared.settings import ServingSettings
from tests.tinydiffusion import tiny_stable_diffusion
from tests.unit.conftest import DEAD_REGISTRY, wait_ready


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture
def client(sd_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = ServingSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=tmp_path / "unused-cache",
        onnx_intra_op_threads=1,
        log_json=False,
    )
    local = GenerateSettings(
        **settings.model_dump(exclude_unset=True), generate_pipeline_dir=sd_dir
    )
    with TestClient(create_app(GenerateService, local)) as test_client:
        wait_ready(test_client, timeout_s=60)
        yield test_client


def test_text_to_image_from_a_local_pipeline_dir(client: TestClient) -> None:
    request = {"prompt": "a photo of a red cat", "width": 32, "height": 24, "steps": 3, "seed": 7}
    body = client.post("/v1/generate", json={**request, "num_images": 2}).json()
    assert body["model"] == {"name": "generate-local", "version": "local", "variant": "local"}
    images = [Image.open(io.BytesIO(base64.b64decode(i["image"]))) for i in body["images"]]
    assert [(im.format, im.size, im.mode) for im in images] == [("PNG", (32, 24), "RGB")] * 2
    assert body["params"]["prompt"] == request["prompt"]
    assert body["safety"] == {"checker": None, "ran": False}  # this bundle has no checker
    again = client.post("/v1/generate", json={**request, "num_images": 2}).json()
    assert [i["image"] for i in again["images"]] == [i["image"] for i in body["images"]]
    assert body["images"][0]["image"] != body["images"][1]["image"]  # seeds 7 and 8
    info = client.get("/v1/model").json()
    assert info["kind"] == "text-to-image" and info["pipeline"] == "StableDiffusionPipeline"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"class": 3}, "text-to-image"),
        ({"prompt": "a cat", "width": 30}, "multiples of 8"),
        ({"prompt": "a cat", "width": 1024, "height": 1024}, "pixels"),
        ({"prompt": " "}, "prompt"),
    ],
)
def test_stable_diffusion_bounds_are_422(client: TestClient, body: dict, named: str) -> None:
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]


def test_every_scheduler_swaps_into_stable_diffusion(client: TestClient) -> None:
    for name in ("ddpm", "ddim", "dpmsolver++", "euler", "euler-ancestral"):
        response = client.post(
            "/v1/generate",
            json={"prompt": "a dog", "steps": 2, "scheduler": name, "width": 16, "height": 16},
        )
        assert response.status_code == 200, (name, response.text)
