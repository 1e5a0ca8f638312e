"""The prediction log of the direct and streaming lanes: explain, generate and text generation
are logged like batched requests (same sampling, same sink), one item per call, with what the
model's `summarize_call` says of it: method and target, image size, generated tokens. A GET of
facts (no input) is no prediction and is not logged; prompts and texts appear only hashed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.explain.service import ExplainService
from services.generate.service import GenerateService
from services.text.service import TextService, TextSettings
from shared.app import create_app
from shared.settings import ServingSettings
from tests.procs import poll_until
from tests.sse import parse_sse
from tests.unit.conftest import DEAD_REGISTRY, wait_ready

LOGGED = {"prediction_log_rate": 1.0, "log_json": False, "onnx_intra_op_threads": 1}


def records(path: Path, count: int) -> list[dict[str, Any]]:
    def written() -> list[dict[str, Any]] | None:
        found = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in found] if len(found) >= count else None

    return poll_until(written, 20, f"{count} records in {path}")


def test_explain_calls_are_logged_with_method_target_and_prediction(tmp_path: Path) -> None:
    from tests.tinyexplain import b64, one_torch_thread, positives, write_region_cache

    write_region_cache(tmp_path / "cache")
    settings = ServingSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_uri="models:/region@production",
        model_cache_dir=tmp_path / "cache",
        max_batch_size=1,
        prediction_log_dir=tmp_path / "log",
        **LOGGED,
    )
    body = {"image": b64(positives(1)[0]), "method": "saliency", "target": 1}
    with one_torch_thread(), TestClient(create_app(ExplainService, settings)) as client:
        wait_ready(client)
        first = client.post("/v1/explain", json=body)
        assert first.status_code == 200, first.text
        assert client.get("/v1/explain/filters").status_code == 200  # facts: not logged
        second = client.post("/v1/explain/activations", json={"image": body["image"]})
        assert second.status_code == 200, second.text
        explained, activations = records(tmp_path / "log" / "explain.jsonl", 2)
    assert explained["endpoint"] == "/v1/explain"
    assert explained["request_id"] == first.headers["x-request-id"]
    assert explained["model"] == first.json()["model"]
    (item,) = explained["items"]
    assert item["input"]["methods"] == ["saliency"] and item["input"]["target"] == 1
    assert item["input"]["shape"] == [1, 16, 16] and len(item["input"]["sha256"]) == 64
    assert item["output"]["label"] == first.json()["prediction"]["label"]
    assert activations["endpoint"] == "/v1/explain/activations"  # filters left no record
    assert activations["items"][0]["input"]["layer"] == second.json()["layer"]


@pytest.fixture(scope="module")
def generate_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tinydiffusion import seed_cache

    cache = tmp_path_factory.mktemp("generate-cache")
    seed_cache(cache)
    return cache


def test_generations_json_and_streamed_are_logged_with_image_size_not_prompt(
    generate_cache: Path, tmp_path: Path
) -> None:
    settings = ServingSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=generate_cache,
        max_batch_size=1,
        request_timeout_s=60,
        prediction_log_dir=tmp_path / "log",
        **LOGGED,
    )
    prompt = "a handwritten digit seven"
    with TestClient(create_app(GenerateService, settings)) as client:
        wait_ready(client, timeout_s=60)
        answer = client.post("/v1/generate", json={"prompt": prompt, "steps": 2, "seed": 1})
        assert answer.status_code == 200, answer.text
        assert client.get("/v1/generate/schedulers").status_code == 200  # facts: not logged
        body = {"class": 3, "steps": 2, "num_images": 2, "stream": True}
        with client.stream("POST", "/v1/generate", json=body) as streamed:
            events = parse_sse(streamed.read().decode())
        assert events[-1][0] == "result"
        path = tmp_path / "log" / "generate.jsonl"
        json_call, stream_call = records(path, 2)
    assert json_call["request_id"] == answer.headers["x-request-id"]
    params = answer.json()["params"]
    logged = json_call["items"][0]
    assert prompt not in path.read_text()  # the prompt only as its hash and length
    assert logged["input"]["prompt"]["length"] == len(prompt)
    assert logged["input"]["steps"] == 2 and logged["input"]["seed"] == 1
    assert logged["output"]["images"] == 1
    assert (logged["output"]["width"], logged["output"]["height"]) == (
        params["width"],
        params["height"],
    )
    streamed_item = stream_call["items"][0]
    assert stream_call["endpoint"] == "/v1/generate"
    assert streamed_item["input"]["class"] == 3 and streamed_item["output"]["images"] == 2


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tinytext import seed_cache

    cache = tmp_path_factory.mktemp("text-cache")
    seed_cache(cache)
    return cache


@pytest.fixture
def text_client(text_cache: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = TextSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=text_cache,
        prediction_log_dir=tmp_path / "log",
        **LOGGED,
    )
    with TestClient(create_app(TextService(), settings)) as client:
        wait_ready(client, timeout_s=60)
        yield client


def test_text_generation_is_logged_with_its_generated_length(
    text_client: TestClient, tmp_path: Path
) -> None:
    source = "def area(width, height):\n    return width * height"
    answer = text_client.post("/v1/text/generate", json={"text": source, "max_new_tokens": 5})
    assert answer.status_code == 200, answer.text
    body = {"text": source, "max_new_tokens": 4, "stream": True}
    with text_client.stream("POST", "/v1/text/generate", json=body) as streamed:
        events = parse_sse(streamed.read().decode())
    picture = text_client.post("/v1/text/attention", json={"text": "Bonjour", "head": 1})
    assert picture.status_code == 200
    classified = text_client.post("/v1/text/classify", json={"texts": ["Guten Tag"]})
    assert classified.status_code == 200
    path = tmp_path / "log" / "text.jsonl"
    found = {record["endpoint"]: record for record in records(path, 4)}
    assert source not in path.read_text()
    (generated,) = found["/v1/text/generate"]["items"]  # the last of the two: streamed
    assert generated["output"]["tokens"] == events[-1][1]["tokens"] <= 4
    assert generated["input"]["max_new_tokens"] == 4 and generated["input"]["tokens"] > 0
    (attention,) = found["/v1/text/attention"]["items"]
    assert attention["output"]["bytes"] == len(picture.content)
    assert attention["input"]["length"] == len("Bonjour") and attention["input"]["head"] == 1
    (label,) = found["/v1/text/classify"]["items"]
    assert label["output"]["label"] == classified.json()["results"][0]["label"]
    assert label["input"]["tokens"] > 0


def test_json_text_generation_logs_the_answers_token_count(
    text_client: TestClient, tmp_path: Path
) -> None:
    answer = text_client.post(
        "/v1/text/generate", json={"text": "def f(x):\n    return x", "max_new_tokens": 3}
    )
    assert answer.status_code == 200, answer.text
    (record,) = records(tmp_path / "log" / "text.jsonl", 1)
    assert record["request_id"] == answer.headers["x-request-id"]
    assert record["items"][0]["output"]["tokens"] == answer.json()["tokens"]
    assert record["latency_ms"] > 0
