"""Bad inputs and parameters out of their bounds: 4xx problem+json naming the bound."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.tinyexplain import b64, explain_client, one_torch_thread, positives, write_region_cache
from tests.unit.conftest import png_bytes


@pytest.fixture(scope="module")
def region_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache_dir = tmp_path_factory.mktemp("explain-cache")
    write_region_cache(cache_dir)
    return cache_dir


@pytest.fixture
def explain(region_cache: Path) -> Iterator[TestClient]:
    with one_torch_thread(), explain_client(region_cache) as client:
        yield client


BAD_PARAMS = [
    ({"method": "integrated_gradients", "params": {"steps": 257}}, "less than or equal to 256"),
    ({"method": "occlusion", "params": {"window": 1}}, "greater than or equal to 2"),
    ({"method": "smoothgrad", "params": {"samples": 65}}, "less than or equal to 64"),
    ({"method": "occlusion", "params": {"window": 17}}, "at most the model input (16x16)"),
    ({"method": "saliency", "params": {"steps": 8}}, "do not apply to saliency"),
    ({"method": "grad_cam", "params": {"layer": "nope"}}, "'nope' is not a layer"),
    ({"method": "saliency", "target": 2}, "class index from 0 to 1"),
    ({"method": "saliency", "target": -1}, "greater than or equal to 0"),
    ({"method": "lime"}, "method"),
    ({"method": "saliency", "extra": 1}, "extra"),
    (
        {"method": "smoothgrad", "params": {"base": "integrated_gradients", "steps": 256}},
        "the bound is 2048",
    ),
]


@pytest.mark.parametrize(("fields", "detail"), BAD_PARAMS)
def test_out_of_bound_parameters_are_422_naming_the_bound(
    explain: TestClient, fields: dict, detail: str
) -> None:
    response = explain.post("/v1/explain", json={"image": b64(positives(1)[0]), **fields})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


def test_bad_inputs_get_their_4xx(explain: TestClient) -> None:
    png = png_bytes(positives(1)[0])
    image = base64.b64encode(png).decode()
    cases = [
        ({"json": {"image": "%%%", "method": "saliency"}}, 400),
        ({"json": {"image": base64.b64encode(b"GIF89a").decode(), "method": "saliency"}}, 400),
        ({"json": {"image": base64.b64encode(png[:40]).decode(), "method": "saliency"}}, 400),
        ({"content": png, "headers": {"content-type": "image/png"}}, 415),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 422),
        ({"json": {"image": b64(np.zeros((300, 300), np.uint8)), "method": "saliency"}}, 413),
    ]
    for kwargs, status in cases:
        response = explain.post("/v1/explain", **kwargs)
        assert response.status_code == status, (status, response.text)
    compare = [
        {"image": image, "methods": ["saliency", "saliency"]},
        {"image": image, "methods": ["saliency"], "params": {"occlusion": {"window": 3}}},
        {"image": image, "methods": []},
    ]
    for body in compare:
        assert explain.post("/v1/explain/compare", json=body).status_code == 422, body
    for body in ({"image": image, "layer": "nope"}, {"image": image, "top_n": 0}):
        assert explain.post("/v1/explain/activations", json=body).status_code == 422, body
    assert explain.get("/readyz").status_code == 200
