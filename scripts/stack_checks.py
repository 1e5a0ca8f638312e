"""The answers `python -m scripts.stack` checks: one real request per service, Prometheus'
scrapes and a moved alias, against the running stack's published ports."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import httpx
from PIL import Image

from loadtests.users.payloads import code_snippets, sentences
from services.catalog import NAMES

TIMEOUT_S = 120.0
DIGITS = 16


@cache
def digits() -> tuple[tuple[str, int], ...]:
    """Held-out digits as base64 PNG with their true digit (what the models were trained on)."""
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    test = load_splits()["test"]
    return tuple(
        (base64.b64encode(encode_png(gray_to_image(img))).decode(), int(test.label_names[label]))
        for img, label in zip(test.images[:DIGITS], test.labels[:DIGITS], strict=True)
    )


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(url, json=body, timeout=TIMEOUT_S)
    assert response.status_code == 200, f"POST {url}: {response.status_code} {response.text[:300]}"
    answer = response.json()
    assert set(answer["model"]) >= {"name", "version", "variant"}, answer.get("model")
    return answer


def is_png(b64: str) -> tuple[int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image.size


def check_classify(url: str) -> str:
    right = 0
    for image, digit in digits():
        answer = post(f"{url}/v1/classify", {"image": image, "top_k": 3})
        scores = [p["score"] for p in answer["predictions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True), answer
        right += answer["predictions"][0]["label"] == str(digit)
    # quick trainings: far better than chance (10%), not the full model's accuracy
    assert right >= DIGITS // 2, f"only {right}/{DIGITS} digits right"
    return f"{right}/{DIGITS} held-out digits right ({answer['model']})"


def check_similarity(url: str) -> str:
    (a, digit), (b, _) = digits()[0], digits()[1]
    same = post(f"{url}/v1/similarity/compare", {"image_a": a, "image_b": a})
    assert same["similarity"] > 0.99 and same["same"], same
    other = post(f"{url}/v1/similarity/compare", {"image_a": a, "image_b": b})
    assert -1.0 <= other["similarity"] <= 1.0, other
    search = post(f"{url}/v1/similarity/search", {"image": a, "k": 5})
    assert 1 <= len(search["matches"]) <= 5, search
    return (
        f"self-similarity {same['similarity']:.3f}, another digit {other['similarity']:.3f}, "
        f"search top label {search['matches'][0]['label']} for a {digit}"
    )


def check_explain(url: str) -> str:
    image, _ = digits()[0]
    answer = post(f"{url}/v1/explain", {"image": image, "method": "saliency", "return_map": True})
    size = is_png(answer["heatmap"])  # over the input image, its size
    height, width = answer["attribution"]["shape"]  # at the model's input size
    values = answer["attribution"]["values"]
    assert len(values) == height and {len(row) for row in values} == {width}, answer["attribution"]
    assert max(abs(v) for row in values for v in row) == 1.0, "the map is not scaled to 1"
    return (
        f"saliency heatmap {size[0]}x{size[1]}, map {height}x{width}, "
        f"predicted {answer['prediction']['label']}"
    )


def check_generate(url: str) -> str:
    answer = post(f"{url}/v1/generate", {"prompt": "a handwritten 7", "steps": 4, "seed": 1})
    assert len(answer["images"]) == 1, answer
    width, height = is_png(answer["images"][0]["image"])
    return f"one {width}x{height} image in 4 steps ({answer['model']})"


def check_text(url: str) -> str:
    texts = list(sentences(1)[:4])
    labels = post(f"{url}/v1/text/classify", {"texts": texts, "top_k": 1})["results"]
    assert len(labels) == len(texts), labels
    # the shortest snippet: a quick-trained summarizer accepts 64 tokens
    snippet = min(code_snippets(), key=len)
    summary = post(f"{url}/v1/text/generate", {"text": snippet})
    assert summary["text"].strip() and summary["tokens"] > 0, summary
    return f"{len(labels)} texts labelled; summary {summary['text'][:40]!r}"


CHECKS: dict[str, Callable[[str], str]] = {
    "classify": check_classify,
    "similarity": check_similarity,
    "explain": check_explain,
    "generate": check_generate,
    "text": check_text,
}
assert tuple(CHECKS) == NAMES, "a service without a stack check"


def check_prometheus(url: str, timeout_s: float = 90.0) -> str:
    """Every service's and MLflow's target is up in Prometheus (one scrape at least)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = httpx.get(f"{url}/api/v1/query", params={"query": "up"}, timeout=10).json()
        up = {
            r["metric"].get("service") or r["metric"]["job"]: r["value"][1]
            for r in found["data"]["result"]
        }
        missing = [name for name in (*NAMES, "mlflow") if up.get(name) != "1"]
        if not missing:
            return f"up == 1 for {', '.join(sorted(up))}"
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus: not up after {timeout_s:.0f} s: {missing} ({up})")
        time.sleep(3)


def check_alias_followed(mlflow: str, service: str, timeout_s: float = 120.0) -> str:
    """Register classify's bundle again as a new version, move @production to it, and wait
    for the running service to answer with that version."""
    api = f"{mlflow}/api/2.0/mlflow"
    now = httpx.get(
        f"{api}/registered-models/alias", params={"name": "classify", "alias": "production"}
    ).json()["model_version"]
    created = httpx.post(
        f"{api}/model-versions/create",
        json={
            "name": "classify",
            "source": now["source"],
            "run_id": now.get("run_id", ""),
            "tags": now.get("tags", []),
            "description": "make test-stack: the same bundle, to move the alias",
        },
    )
    assert created.status_code == 200, created.text
    version = created.json()["model_version"]["version"]
    moved = httpx.post(
        f"{api}/registered-models/alias",
        json={"name": "classify", "alias": "production", "version": version},
    )
    assert moved.status_code == 200, moved.text
    image, _ = digits()[0]
    deadline, started = time.monotonic() + timeout_s, time.monotonic()
    while True:
        served = post(f"{service}/v1/classify", {"image": image})["model"]["version"]
        if served == version:
            waited = time.monotonic() - started
            return f"version {now['version']} -> {version} served after {waited:.0f} s"
        if time.monotonic() > deadline:
            raise AssertionError(f"still version {served} {timeout_s:.0f} s after the move")
        time.sleep(1)
