"""explain never serves torch weights it could not check against the fp32 export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.explain.service import ExplainService
from shared.app import create_app
from tests.procs import poll_until
from tests.tinyexplain import one_torch_thread, region_settings, write_region_cache


def settled_readyz(client: TestClient) -> Any:
    def settled() -> Any:  # the first load attempt runs in the background after start
        answer = client.get("/readyz")
        return answer if answer.status_code == 200 or "fp32" in answer.text else None

    return poll_until(settled, 30, "loaded or refused")


@pytest.mark.parametrize("fp32", ["outputs", "onnx"])
def test_parity_is_checked_from_stored_outputs_or_the_onnx_export(
    tmp_path: Path, fp32: str
) -> None:
    """Without stored expected outputs the service runs the fp32 ONNX model itself."""
    write_region_cache(tmp_path / "cache", fp32=fp32)
    settings = region_settings(tmp_path / "cache")
    with one_torch_thread(), TestClient(create_app(ExplainService, settings)) as client:
        readyz = settled_readyz(client)
        assert readyz.status_code == 200, readyz.text


def test_a_bundle_whose_parity_cannot_be_checked_never_becomes_ready(tmp_path: Path) -> None:
    write_region_cache(tmp_path / "cache", fp32="")  # torch weights only, like region-torch
    settings = region_settings(tmp_path / "cache")
    with one_torch_thread(), TestClient(create_app(ExplainService, settings)) as client:
        readyz = settled_readyz(client)
        assert readyz.status_code == 503
        assert "has no fp32 export with sample inputs" in readyz.json()["detail"]
