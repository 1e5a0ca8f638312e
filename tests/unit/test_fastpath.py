"""The batched fast path (shared/fastpath.py) answers as the routed request does."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.classify.service import ClassifyService
from shared.app import create_app
from shared.settings import ServingSettings
from tests.unit.conftest import png_bytes, wait_ready

PNG = {"content-type": "image/png"}


def test_fast_and_routed_requests_give_the_same_answer(client: TestClient) -> None:
    body = png_bytes(np.full((8, 8), 200, np.uint8))
    fast = client.post("/v1/classify", content=body, headers=PNG)  # no query: the fast path
    routed = client.post("/v1/classify?top_k=5", content=body, headers=PNG)  # FastAPI's route
    assert fast.status_code == routed.status_code == 200
    assert fast.json() == routed.json()
    assert fast.headers["content-type"] == routed.headers["content-type"]
    metrics = client.get("/metrics").text
    assert (
        'modelplane_requests_total{method="POST",route="/v1/classify",service="classify",'
        'status="200"} 2.0' in metrics
    )


def test_fast_path_errors_are_the_apps_problem_answers(client: TestClient) -> None:
    fast = client.post("/v1/classify", content=b"not a png", headers=PNG)
    routed = client.post("/v1/classify?top_k=1", content=b"not a png", headers=PNG)
    assert fast.status_code == routed.status_code == 400
    assert fast.headers["content-type"] == "application/problem+json"
    assert {k: v for k, v in fast.json().items() if k != "request_id"} == {
        k: v for k, v in routed.json().items() if k != "request_id"
    }
    wrong = client.post("/v1/classify", content=b"{}", headers={"content-type": "text/plain"})
    assert wrong.status_code == 415


def test_bearer_tokens_still_guard_the_route(settings: ServingSettings) -> None:
    guarded = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with TestClient(create_app(ClassifyService, guarded)) as client:
        wait_ready(client)
        body = png_bytes(np.full((8, 8), 200, np.uint8))
        assert client.post("/v1/classify", content=body, headers=PNG).status_code == 401
        allowed = {**PNG, "authorization": "Bearer s3cret"}
        assert client.post("/v1/classify", content=body, headers=allowed).status_code == 200
