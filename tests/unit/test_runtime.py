"""The runtime v2 contract on a small two-model service: declared endpoints on each lane,
several models loaded and swapped on their own, bounded pools, streams that refuse before
they open, a fixed variant, per-stage timing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import Field

from shared.app import create_app
from shared.bundle import Bundle
from shared.registry import FetchedModel
from shared.requests import RequestBody
from shared.service import Call, Endpoint, Lane, ModelService, ModelSpec, Pool, Service
from shared.settings import ServingSettings
from shared.sources import ModelSource
from tests.procs import poll_until
from tests.unit.conftest import DEAD_REGISTRY, wait_ready


class VersionedDirectory(ModelSource):
    """`<root>/<version>/weights.json`, the version named by `<root>/current`: a source whose
    version moves when the test writes `current`, as an alias moves in the registry."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.uri = str(root)
        self.name = name

    def current_version(self) -> str | None:
        return (self.root / "current").read_text().strip()

    def fetch(self) -> FetchedModel:
        version = self.current_version() or ""
        manifest = {"task": "words", "name": self.name, "variants": {"fp32": {}}, "files": {}}
        bundle = Bundle(self.root / version, {**manifest, "default_variant": "fp32"})
        return FetchedModel(bundle, self.name, version, None, from_cache_only=False)


class TextBody(RequestBody):
    text: str = Field(min_length=1, max_length=200)
    stream: bool = False


GATE = threading.Event()  # the slow model's work waits on it: "a call is running"
RUNNING = threading.Event()
PREPROCESSED_ON: list[str] = []  # the thread each preprocess ran on


class Weights(ModelService):
    def load(self, bundle: Bundle, variant: str, settings: Any) -> None:
        self.weights = json.loads((bundle.path / "weights.json").read_text())
        self.variant = variant

    def words(self, body: TextBody) -> list[list[str]]:
        PREPROCESSED_ON.append(threading.current_thread().name)
        if "heavy" in body.text:  # a large input's decoding: milliseconds of real work
            hashlib.sha256(bytes(20_000_000)).digest()
        return [body.text.split()]

    def predict(self, items: list[list[str]]) -> list[float]:
        return [sum(self.weights.get(w, 0.0) for w in words) for words in items]

    def scored(self, outputs: list[float], body: TextBody) -> dict[str, Any]:
        return {"score": outputs[0]}

    def slow(self, body: TextBody, call: Call) -> dict[str, Any]:
        RUNNING.set()
        GATE.wait(10)
        for word in body.text.split():
            call.check()
            call.emit("word", {"word": word, "weight": self.weights.get(word, 0.0)})
        return {"words": len(body.text.split())}


class Torchy(Weights):
    fixed_variant = "torch"


class TwoModels(Service):
    name = "two"
    models = (
        ModelSpec("score", Weights, "score"),
        ModelSpec("slow", Torchy, "slow", uri_setting="slow_uri", variant_setting="slow_variant"),
    )
    pools = (Pool("slow", workers=1, queue=1),)
    endpoints = (
        Endpoint(
            "/v1/score",
            Lane.BATCHED,
            "Score",
            body=TextBody,
            preprocess=Weights.words,
            postprocess=Weights.scored,
        ),
        Endpoint(
            "/v1/slow",
            Lane.STREAMING,
            "Slow",
            model="slow",
            body=TextBody,
            call=Weights.slow,
            pool="slow",
        ),
    )

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots = roots

    def make_source(self, spec: ModelSpec, settings: ServingSettings, primary: bool) -> ModelSource:
        return VersionedDirectory(self.roots[spec.key], spec.registered_model)


class TwoSettings(ServingSettings):
    slow_uri: str = ""
    slow_variant: str = ""


TwoModels.settings_class = TwoSettings


def publish(root: Path, version: str, weights: dict[str, float]) -> None:
    (root / version).mkdir(parents=True, exist_ok=True)
    (root / version / "weights.json").write_text(json.dumps(weights))
    (root / "current").write_text(version)


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    found = {"score": tmp_path / "score", "slow": tmp_path / "slow"}
    publish(found["score"], "1", {"good": 1.0})
    publish(found["slow"], "1", {"good": 5.0})
    GATE.set()
    RUNNING.clear()
    return found


def settings(**overrides: Any) -> TwoSettings:
    return TwoSettings(mlflow_tracking_uri=DEAD_REGISTRY, log_json=False, **overrides)


def test_every_declared_model_is_loaded_reported_and_answers_its_endpoints(
    roots: dict[str, Path],
) -> None:
    with TestClient(create_app(TwoModels(roots), settings())) as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["models"] == {
            "score": {"name": "score", "version": "1", "variant": "fp32"},
            "slow": {"name": "slow", "version": "1", "variant": "torch"},  # its fixed variant
        }
        assert set(client.get("/v1/model").json()["models"]) == {"score", "slow"}
        assert client.post("/v1/score", json={"text": "good good"}).json() == {
            "score": 2.0,
            "model": {"name": "score", "version": "1", "variant": "fp32"},
        }
        slow = client.post("/v1/slow", json={"text": "good bad"}).json()
        assert slow == {"words": 2, "model": {"name": "slow", "version": "1", "variant": "torch"}}
        stages = [
            line
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("modelplane_stage_duration_seconds_count")
        ]
        for route, stage in [("/v1/score", s) for s in ("preprocess", "queue", "predict")] + [
            ("/v1/score", "postprocess"),
            ("/v1/slow", "queue"),
            ("/v1/slow", "predict"),
        ]:
            assert any(f'route="{route}"' in s and f'stage="{stage}"' in s for s in stages)


def test_a_second_models_move_is_followed_on_its_own(roots: dict[str, Path]) -> None:
    app = create_app(TwoModels(roots), settings(), load=False)
    runtime = app.state.runtime
    with TestClient(app) as client:
        for key in ("score", "slow"):
            runtime.activate(runtime.load_once(key))
        publish(roots["slow"], "2", {"good": 7.0})
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            assert not runtime.reload_if_moved(loop, "score")  # its source did not move
            assert runtime.reload_if_moved(loop, "slow")
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
        streamed = client.post("/v1/slow", json={"text": "good", "stream": True}).text
        assert '"weight": 7.0' in streamed  # the new version answers
        assert client.get("/readyz").json()["models"]["slow"]["version"] == "2"
        assert client.get("/readyz").json()["models"]["score"]["version"] == "1"


def test_a_full_pool_refuses_with_503_before_any_stream_opens(roots: dict[str, Path]) -> None:
    GATE.clear()
    with TestClient(create_app(TwoModels(roots), settings())) as client:
        wait_ready(client)
        answers: list[int] = []

        def post() -> None:
            answers.append(client.post("/v1/slow", json={"text": "good"}).status_code)

        running = threading.Thread(target=post)
        running.start()
        assert RUNNING.wait(10)
        waiting = threading.Thread(target=post)
        waiting.start()

        def queue_depth() -> float:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith("modelplane_queue_depth{"):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        poll_until(lambda: queue_depth() >= 1, 10, "the second call waiting")
        refused = client.post("/v1/slow", json={"text": "good", "stream": True})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert "queue is full" in refused.json()["detail"]
        GATE.set()
        running.join(10)
        waiting.join(10)
    assert answers == [200, 200]


def test_a_call_that_waited_past_its_deadline_is_not_run(roots: dict[str, Path]) -> None:
    GATE.clear()
    with TestClient(create_app(TwoModels(roots), settings(request_timeout_s=0.2))) as client:
        wait_ready(client)
        first: list[int] = []
        running = threading.Thread(
            target=lambda: first.append(client.post("/v1/slow", json={"text": "a"}).status_code)
        )
        running.start()
        assert RUNNING.wait(10)
        threading.Timer(0.5, GATE.set).start()  # the running call holds the worker 0.5 s
        late = client.post("/v1/slow", json={"text": "good", "stream": True})
        running.join(10)
    assert late.status_code == 504 and late.json()["code"] == "deadline_exceeded"
    assert first == [504]  # it ran past its own deadline between words: stopped, 504


def test_a_fixed_variant_model_reports_the_variant_it_serves_whatever_the_setting(
    roots: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(TwoModels(roots), settings(slow_variant="int8"), load=False)
    with caplog.at_level("WARNING", logger="modelplane.service"):
        loaded = app.state.runtime.load_once("slow")
    assert loaded.variant == "torch"
    assert "SLOW_VARIANT='int8' is ignored" in caplog.text


def test_a_declaration_naming_an_undeclared_pool_or_model_fails_at_build() -> None:
    class Broken(TwoModels):
        endpoints = (Endpoint("/v1/x", Lane.DIRECT, "X", call=Weights.slow, pool="nowhere"),)

    with pytest.raises(ValueError, match="pool 'nowhere'"):
        create_app(Broken({}), settings(), load=False)

    class NoModel(TwoModels):
        endpoints = (Endpoint("/v1/x", Lane.BATCHED, "X", model="missing"),)

    with pytest.raises(ValueError, match="model 'missing'"):
        create_app(NoModel({}), settings(), load=False)


def test_cheap_preprocessing_runs_on_the_event_loop_and_costly_on_the_workers(
    roots: dict[str, Path],
) -> None:
    def on_workers(text: str, client: TestClient) -> bool:
        PREPROCESSED_ON.clear()
        assert client.post("/v1/score", json={"text": text}).status_code == 200
        (thread,) = PREPROCESSED_ON
        return thread.startswith("two-pre")

    with TestClient(create_app(TwoModels(roots), settings())) as client:
        wait_ready(client)
        assert not on_workers("good", client)  # no hand-off to a thread and back
        assert not on_workers("heavy good", client)  # its cost is known only once it ran
        assert on_workers("good", client)  # the moving average is now above 300 us
        # cheap again: back on the loop once the average has decayed below the threshold
        back = [on_workers("good", client) for _ in range(30)]
        assert back[-1] is False and back.index(False) > 3, back
    with TestClient(create_app(TwoModels(roots), settings(preprocess_inline_us=0))) as client:
        wait_ready(client)
        assert on_workers("good", client)  # 0: always on the workers
