"""Rollouts on a direct lane, in process: text generation answered by the challenger when
asked, and every production generation shadowed on it with the same sampling seed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loadtests.bench_rollout import counter
from services.text.service import TextService, TextSettings
from shared.app import create_app
from tests.procs import poll_until
from tests.tinyserve import DEAD_REGISTRY


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny text bundles, text-generate also as version 2 behind @challenger (cached:
    the registry is down, so the cache's last known aliases are served)."""
    from tests.tinytext import seed_cache

    cache = tmp_path_factory.mktemp("text-rollout")
    seed_cache(cache)
    shutil.copytree(cache / "text-generate" / "1", cache / "text-generate" / "2")
    aliases = {"production": "1", "challenger": "2"}
    (cache / "text-generate" / "aliases.json").write_text(json.dumps(aliases))
    return cache


@pytest.fixture
def client(two_versions: Path) -> Iterator[TestClient]:
    settings = TextSettings(
        mlflow_tracking_uri=DEAD_REGISTRY, model_cache_dir=two_versions, shadow_percent=100
    )
    with TestClient(create_app(TextService(), settings)) as client:
        # ready first (production), the challenger right after
        poll_until(lambda: challenger_served(client), 60, "the challenger served")
        yield client


def challenger_served(client: TestClient) -> bool:
    if client.get("/readyz").status_code != 200:
        return False
    return bool(client.get("/v1/model").json()["models"]["generate"]["challenger"]["served"])


def metric(client: TestClient, name: str, **labels: str) -> float:
    return counter(client.get("/metrics").text, name, **labels)


def test_generation_is_shadowed_with_the_same_seed_and_agrees(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    info = client.get("/v1/model").json()
    assert info["models"]["generate"]["challenger"]["version"] == "2"
    assert info["models"]["classify"]["challenger"]["served"] is False  # its alias: nothing cached
    source = "def area(width, height):\n    return width * height"
    for strategy in ("sample", "greedy"):
        body = {"text": source, "max_new_tokens": 6, "strategy": strategy}
        answer = client.post("/v1/text/generate", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["version"] == "1"  # production answers; shadow is silent

    def compared() -> float:
        return metric(client, "modelplane_shadow_requests_total", outcome="compared")

    poll_until(lambda: compared() >= 2, 30, "both shadows compared")
    assert compared() == 2
    # identical weights, the same seed: the challenger's summaries match word for word
    assert metric(client, "modelplane_shadow_agreement_sum", version="2") == 2.0
    assert metric(client, "modelplane_model_requests_total", version="2", role="shadow") == 2

    with caplog.at_level("INFO", logger="modelplane.access"):
        named = client.post(
            "/v1/text/generate",
            json={"text": source, "max_new_tokens": 3},
            headers={"x-model-alias": "challenger"},
        )
    assert named.status_code == 200 and named.json()["model"]["version"] == "2"
    (logged,) = [r for r in caplog.records if r.name == "modelplane.access"]
    assert logged.model_version == "2"  # type: ignore[attr-defined]  # who answered
    refused = client.post(
        "/v1/text/classify", json={"texts": ["Hallo"]}, headers={"x-model-alias": "challenger"}
    )
    assert refused.status_code == 503 and "no version of classify" in refused.json()["detail"]
