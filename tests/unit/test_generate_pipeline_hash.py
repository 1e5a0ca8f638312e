"""GENERATE_PIPELINE_DIR is hashed at load: the hash is in /v1/model, and a mismatch with
GENERATE_PIPELINE_SHA256 keeps the service from becoming ready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.generate.service import GenerateService, GenerateSettings
from shared.app import create_app
from shared.bundle import directory_sha256
from tests.procs import poll_until
from tests.tinydiffusion import tiny_stable_diffusion
from tests.unit.conftest import DEAD_REGISTRY


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


def settings(sd_dir: Path, cache: Path, expected: str | None) -> GenerateSettings:
    return GenerateSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=cache,
        onnx_intra_op_threads=1,
        log_json=False,
        generate_pipeline_dir=sd_dir,
        generate_pipeline_sha256=expected,
    )


def settled(client: TestClient) -> Any:
    def answer() -> Any:
        got = client.get("/readyz")
        return got if got.status_code == 200 or "sha256" in got.text else None

    return poll_until(answer, 60, "loaded or refused")


@pytest.mark.parametrize("matches", [None, True])
def test_the_pipeline_hash_is_shown_and_a_matching_expectation_loads(
    sd_dir: Path, tmp_path: Path, matches: bool | None
) -> None:
    digest = directory_sha256(sd_dir)
    expected = digest.upper() if matches else None  # hex case does not matter
    with TestClient(create_app(GenerateService, settings(sd_dir, tmp_path, expected))) as client:
        assert settled(client).status_code == 200
        assert client.get("/v1/model").json()["pipeline_sha256"] == digest


def test_a_pipeline_dir_that_changed_is_refused(sd_dir: Path, tmp_path: Path) -> None:
    wrong = "0" * 64
    with TestClient(create_app(GenerateService, settings(sd_dir, tmp_path, wrong))) as client:
        readyz = settled(client)
        assert readyz.status_code == 503
        assert f"GENERATE_PIPELINE_SHA256 is {wrong}" in readyz.json()["detail"]


def test_an_expected_hash_that_is_not_hex_is_a_settings_error(sd_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="generate_pipeline_sha256"):
        settings(sd_dir, tmp_path, "not-a-hash")
