from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.classify.service import ClassifyService
from shared.app import create_app
from shared.settings import ServingSettings
from tests.procs import poll_until
from tests.tinymodels import seed_cache

DEAD_REGISTRY = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    seed_cache(tmp_path / "cache")
    return tmp_path / "cache"


@pytest.fixture
def settings(cache_dir: Path) -> ServingSettings:
    return ServingSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=cache_dir,
        onnx_intra_op_threads=1,
        max_body_bytes=64 * 1024,
        max_image_pixels=256 * 256,
        log_json=False,
    )


def wait_ready(client: TestClient, timeout_s: float = 20) -> None:
    poll_until(
        lambda: client.get("/readyz").status_code == 200,
        timeout_s,
        f"ready (last /readyz: {client.get('/readyz').text})",
        interval_s=0.02,
    )


@pytest.fixture
def client(settings: ServingSettings) -> Iterator[TestClient]:
    with TestClient(create_app(ClassifyService, settings)) as test_client:
        wait_ready(test_client)
        yield test_client
