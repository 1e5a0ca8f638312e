"""Train --quick → export → serve similarity, all real: MLflow server, jobs, uvicorn."""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from shared.media import encode_png, gray_to_image
from shared.registry import RegistryClient
from tests.procs import free_port, run_module, running, tail, wait_http
from training import data as digits
from training import similarity_eval as ev
from training.data import load_splits

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Served:
    tracking_uri: str
    url: str
    log: Path
    workdir: Path
    train_log: str


@pytest.fixture(scope="module")
def served(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("similarity")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    train_log = run_module(
        "training.similarity", "--quick", "--threads", "1", env=env, log=workdir / "train.log"
    )
    run_module(
        "training.export",
        "similarity",
        "--quick",
        "--threads",
        "1",
        "--cache-dir",
        str(workdir / "export-cache"),
        env=env,
        log=workdir / "export.log",
    )
    port, log = free_port(), workdir / "service.log"
    service_env = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MODEL_CACHE_DIR": str(workdir / "cache"),
        "ONNX_INTRA_OP_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "services.similarity", "--port", str(port)]
    with running(cmd, log, service_env) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout_s=90)
        yield Served(mlflow_server, f"http://127.0.0.1:{port}", log, workdir, train_log)


def registry(served: Served) -> MlflowClient:
    """A client of this test's server (explicit registry URI: not whatever was set globally)."""
    return MlflowClient(tracking_uri=served.tracking_uri, registry_uri=served.tracking_uri)


def b64(pixels: np.ndarray) -> str:
    return base64.b64encode(encode_png(gray_to_image(pixels))).decode()


def test_training_logged_its_objective_metrics_and_plots(served: Served) -> None:
    client = registry(served)
    candidate = client.get_model_version_by_alias("similarity-torch", "candidate")
    run = client.get_run(candidate.run_id)
    assert run.data.params["objective.library"] == "pytorch-metric-learning"
    assert run.data.params["objective.loss"] == "TripletMarginLoss"
    assert run.data.params["objective.miner"] == "TripletMarginMiner"
    metrics = run.data.metrics
    for metric in ("test_auc", "test_eer", "test_recall_at_1", "test_recall_at_5", "test_map"):
        assert 0.0 <= metrics[metric] <= 1.0
    # the floor: cosine similarity of the raw input pixels on the same held-out pairs
    test = load_splits()["test"]
    spec = digits.image_spec(16, 1)
    pixel_auc = ev.pixel_auc(digits.preprocess(test.images, spec), test.labels)
    assert metrics["test_pixel_auc"] == pytest.approx(pixel_auc)
    assert metrics["test_auc"] >= pixel_auc + 0.02, (metrics["test_auc"], pixel_auc)
    assert metrics["test_recall_at_1"] >= 0.6  # chance (a random gallery item): 10%
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/roc_curve.png", "plots/test_embeddings_pca.png"} <= plots
    assert "TripletMarginMiner (semi-hard)" in served.train_log


def test_export_registered_a_gallery_bundle_with_parity(served: Served) -> None:
    client = registry(served)
    production = client.get_model_version_by_alias("similarity", "production")
    assert production.tags["gallery_size"] == str(len(load_splits()["train"].labels))
    assert "fp32" in production.tags["variants"].split(",")
    metrics = client.get_run(production.run_id).data.metrics
    assert metrics["fp32.max_abs_diff_torch"] <= 1e-4
    with httpx.Client(base_url=served.url, timeout=30) as http:
        info = http.get("/v1/model").json()
        gallery = http.get("/v1/similarity/gallery").json()
    assert info["threshold"] == pytest.approx(metrics["fp32.threshold"])
    assert (gallery["size"], gallery["index"]) == (len(load_splits()["train"].labels), "flat")


def test_same_digits_score_above_the_threshold_more_often(served: Served) -> None:
    test = load_splits()["test"]
    rng = np.random.default_rng(1)
    same_scores, other_scores, threshold = [], [], 0.0
    with httpx.Client(base_url=served.url, timeout=30) as http:
        while len(same_scores) < 60 or len(other_scores) < 60:
            i, j = rng.choice(len(test.labels), size=2, replace=False)
            bucket = same_scores if test.labels[i] == test.labels[j] else other_scores
            if len(bucket) >= 60:
                continue
            body = {"image_a": b64(test.images[i]), "image_b": b64(test.images[j])}
            result = http.post("/v1/similarity/compare", json=body).json()
            assert result["same"] is (result["similarity"] >= result["threshold"])
            bucket.append(result["similarity"])
            threshold = result["threshold"]
    same_rate = np.mean(np.array(same_scores) >= threshold)
    other_rate = np.mean(np.array(other_scores) >= threshold)
    assert same_rate > other_rate, (same_rate, other_rate)
    assert np.mean(same_scores) > np.mean(other_scores)


def test_search_with_held_out_queries_finds_their_digit(served: Served) -> None:
    """Queries are test digits, never gallery items: the top hit must be another image of the
    same digit, found far more often than chance (10%)."""
    test = load_splits()["test"]
    picks = np.random.default_rng(2).choice(len(test.labels), size=30, replace=False)
    gallery_ids = {f"train-{i}" for i in load_splits()["train"].indices}
    hits = 0
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for i in picks:
            response = http.post(
                "/v1/similarity/search", json={"image": b64(test.images[i]), "k": 5}
            )
            assert response.status_code == 200, response.text
            matches = response.json()["matches"]
            assert len(matches) == 5
            assert {m["id"] for m in matches} <= gallery_ids
            hits += matches[0]["label"] == str(test.labels[i])
            assert [m["score"] for m in matches] == sorted(
                (m["score"] for m in matches), reverse=True
            )
    assert hits / len(picks) >= 0.6, f"{hits}/{len(picks)} top hits of the query's digit"


def test_service_embeddings_match_the_pytorch_encoder(served: Served) -> None:
    import torch

    from models.similarity import load_torch_bundle
    from shared.media import ImageSpec
    from training.data import preprocess

    registry_client = RegistryClient(served.tracking_uri)
    source = registry_client.fetch(
        "models:/similarity-torch@candidate", served.workdir / "ref-cache"
    ).bundle
    test = load_splits()["test"]
    inputs = preprocess(test.images[:40], ImageSpec.from_manifest(source.preprocessing))
    with torch.no_grad():
        reference = load_torch_bundle(source)(torch.from_numpy(inputs)).numpy()
    with httpx.Client(base_url=served.url, timeout=30) as http:
        response = http.post(
            "/v1/similarity/embed", json={"images": [b64(i) for i in test.images[:40]]}
        )
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["embeddings"], dtype=np.float32)
    assert np.max(np.abs(got - reference)) <= 1e-4


def test_gallery_additions_and_bad_inputs_over_http(served: Served) -> None:
    digit = load_splits()["test"].images[0]
    cases = [
        ("/v1/similarity/search", {"image": b64(digit), "k": 0}, 422),
        ("/v1/similarity/search", {"image": b64(digit), "k": 1000}, 422),
        ("/v1/similarity/search", {"image": "not base64!"}, 400),
        (
            "/v1/similarity/compare",
            {"image_a": b64(digit), "image_b": base64.b64encode(b"GIF89a").decode()},
            400,
        ),
        ("/v1/similarity/embed", {"images": []}, 422),
        ("/v1/similarity/gallery", {"images": [b64(digit)], "labels": []}, 422),
    ]
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for route, body, status in cases:
            response = http.post(route, json=body)
            assert response.status_code == status, (route, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        raw = http.post(
            "/v1/similarity/embed", content=b"{}", headers={"content-type": "text/plain"}
        )
        assert raw.status_code == 415
        before = http.get("/v1/similarity/gallery").json()["size"]
        added = http.post(
            "/v1/similarity/gallery", json={"images": [b64(digit)], "labels": ["0"], "ids": ["e2e"]}
        )
        assert added.status_code == 200 and added.json()["size"] == before + 1
        top = http.post("/v1/similarity/search", json={"image": b64(digit), "k": 1}).json()
        assert top["matches"][0]["id"] == "e2e"
        assert http.get("/readyz").status_code == 200
    assert "Traceback" not in tail(served.log, 400)
