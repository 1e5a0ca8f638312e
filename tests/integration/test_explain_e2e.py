"""Train --quick → export → the explain and classify services as real processes, side by side.

The model gets its own registered names (explain-e2e-torch → explain-e2e) so other tests in the
same MLflow session keep `classify@production` to themselves.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from models.methods import METHODS
from shared.media import encode_png, gray_to_image
from tests.procs import free_port, run_module, running, tail, wait_http

pytestmark = pytest.mark.integration

SOURCE = "explain-e2e-torch"
NAME = "explain-e2e"
URI = f"models:/{NAME}@production"


@dataclass(frozen=True)
class Stack:
    tracking_uri: str
    workdir: Path
    explain: str
    classify: str
    explain_log: Path


@pytest.fixture(scope="module")
def stack(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("explain")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    run_module(
        "training.classify",
        "--quick",
        "--model-name",
        SOURCE,
        "--experiment",
        "explain-e2e",
        env=env,
        log=workdir / "train.log",
    )
    run_module(
        "training.export",
        "classify",
        "--source",
        f"models:/{SOURCE}@candidate",
        "--name",
        NAME,
        "--cache-dir",
        str(workdir / "export-cache"),
        # fp32 only: the variant explain is checked against (test_export.py covers the rest)
        "--variants",
        "fp32",
        "--skip-study",
        "--quick",
        "--checkpoint-dir",
        str(workdir / "export-checkpoints"),
        env=env,
        log=workdir / "export.log",
    )
    urls, procs = {}, {}
    with ExitStack() as stack:
        for service in ("explain", "classify"):  # both start at once, then both are awaited
            port = free_port()
            service_env = {
                **env,
                "MODEL_URI": URI,
                "MODEL_VARIANT": "fp32",
                "MODEL_CACHE_DIR": str(workdir / f"cache-{service}"),
                "ONNX_INTRA_OP_THREADS": "1",
            }
            cmd = [sys.executable, "-m", f"services.{service}", "--port", str(port)]
            log = workdir / f"{service}.log"
            procs[service] = (stack.enter_context(running(cmd, log, service_env)), log)
            urls[service] = f"http://127.0.0.1:{port}"
        for service, (proc, log) in procs.items():
            wait_http(f"{urls[service]}/readyz", proc, log, timeout_s=120)
        yield Stack(mlflow_server, workdir, urls["explain"], urls["classify"], procs["explain"][1])


def held_out(count: int) -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_splits

    test = load_splits()["test"]
    return test.images[:count], test.labels[:count]


def b64(pixels: np.ndarray) -> str:
    return base64.b64encode(encode_png(gray_to_image(pixels))).decode()


def test_every_method_returns_a_finite_heatmap_of_the_input_size(stack: Stack) -> None:
    digit = np.kron(held_out(1)[0][0], np.ones((5, 4), np.uint8))  # 40 x 32
    with httpx.Client(base_url=stack.explain, timeout=120) as http:
        size = http.get("/v1/model").json()["preprocessing"]["size"]
        for method in METHODS:
            body = {"image": b64(digit), "method": method, "return_map": True}
            response = http.post("/v1/explain", json=body)
            assert response.status_code == 200, (method, response.text)
            result = response.json()
            heatmap = Image.open(io.BytesIO(base64.b64decode(result["heatmap"])), formats=["PNG"])
            assert heatmap.size == (32, 40), method
            values = np.asarray(result["attribution"]["values"], dtype=np.float64)
            assert list(values.shape) == size and np.isfinite(values).all(), method
            assert np.abs(values).max() > 0 or method in ("grad_cam", "guided_grad_cam")
            assert result["model"] == {"name": NAME, "version": "1", "variant": "torch"}


def test_prediction_equals_the_classify_services(stack: Stack) -> None:
    images, _ = held_out(20)
    with (
        httpx.Client(base_url=stack.explain, timeout=60) as explain,
        httpx.Client(base_url=stack.classify, timeout=60) as classify,
    ):
        for pixels in images:
            png = encode_png(gray_to_image(pixels))
            served = classify.post(
                "/v1/classify?top_k=1", content=png, headers={"content-type": "image/png"}
            ).json()["predictions"][0]
            body = {"image": base64.b64encode(png).decode(), "method": "saliency"}
            explained = explain.post("/v1/explain", json=body).json()["prediction"]
            assert explained["label"] == served["label"]
            assert explained["score"] == pytest.approx(served["score"], abs=1e-4)


def test_ig_deletion_auc_is_lower_than_random_attribution(stack: Stack) -> None:
    images, _ = held_out(8)
    deletion: dict[str, list[float]] = {"integrated_gradients": [], "random": []}
    with httpx.Client(base_url=stack.explain, timeout=120) as http:
        for pixels in images:
            body = {
                "image": b64(pixels),
                "methods": list(deletion),
                "params": {"integrated_gradients": {"steps": 16}},
            }
            response = http.post("/v1/explain/compare", json=body)
            assert response.status_code == 200, response.text
            for result in response.json()["results"]:
                deletion[result["method"]].append(result["fidelity"]["deletion_auc"])
    assert np.mean(deletion["integrated_gradients"]) < np.mean(deletion["random"]), deletion


def test_activations_and_filters_over_http(stack: Stack) -> None:
    with httpx.Client(base_url=stack.explain, timeout=60) as http:
        body = {"image": b64(held_out(1)[0][0]), "layer": "layer1", "top_n": 4}
        activations = http.post("/v1/explain/activations", json=body).json()
        assert activations["shape"][0] == 64 and len(activations["channels"]) == 4
        filters = http.get("/v1/explain/filters").json()
        assert filters["layer"] == "conv1" and filters["shape"][:2] == [64, 3]


def test_bad_inputs_and_out_of_bound_params_get_4xx(stack: Stack) -> None:
    image = b64(held_out(1)[0][0])
    cases = [
        ({"json": {"image": "not base64!", "method": "saliency"}}, 400),
        ({"json": {"image": base64.b64encode(b"nope").decode(), "method": "saliency"}}, 400),
        ({"content": b"\x89PNG", "headers": {"content-type": "image/png"}}, 415),
        ({"json": {"image": image, "method": "saliency", "target": 10}}, 422),
        (
            {"json": {"image": image, "method": "integrated_gradients", "params": {"steps": 999}}},
            422,
        ),
        ({"json": {"image": image, "method": "occlusion", "params": {"window": 1}}}, 422),
        ({"json": {"image": image, "method": "smoothgrad", "params": {"samples": 100}}}, 422),
        ({"json": {"image": image, "method": "grad_cam", "params": {"layer": "fc"}}}, 422),
        # a block's ReLU runs twice per forward: no single feature map to hook
        (
            {"json": {"image": image, "method": "grad_cam", "params": {"layer": "layer1.0.relu"}}},
            422,
        ),
    ]
    with httpx.Client(base_url=stack.explain, timeout=60) as http:
        for kwargs, status in cases:
            response = http.post("/v1/explain", **kwargs)
            assert response.status_code == status, (kwargs, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        assert http.get("/readyz").status_code == 200
    assert "Traceback" not in tail(stack.explain_log, 400)


def test_explain_report_logs_grids_and_table_to_the_source_run(stack: Stack) -> None:
    output = run_module(
        "training.explain_report",
        "--model-uri",
        URI,
        "--images",
        "2",
        "--methods",
        "saliency,grad_cam,random",
        "--layers",
        "layer2,layer3",
        "--embed-images",
        "60",
        "--threads",
        "1",
        "--out",
        str(stack.workdir / "report"),
        "--cache-dir",
        str(stack.workdir / "report-cache"),
        env={"MLFLOW_TRACKING_URI": stack.tracking_uri},
        log=stack.workdir / "report.log",
    )
    assert "| integrated_gradients" not in output and "| grad_cam | layer3 | 2 |" in output
    assert "<- default layer" in output and "silhouette by label" in output
    views = json.loads((stack.workdir / "report" / "model_views.json").read_text())
    measured = views["gradcam_layers"]["layers"]
    assert [row["layer"] for row in measured] == ["layer1", "layer2", "layer3", "layer4"]
    best = next(row for row in measured if row["layer"] == views["gradcam_layers"]["chosen"])
    assert all(
        best["fidelity"] >= row["fidelity"] - 1e-3
        for row in measured
        if min(row["resolution"]) >= 2
    )
    # a trained classifier's embeddings separate the digits far better than its input pixels
    assert views["embeddings"]["silhouette_embedding"] > views["embeddings"]["silhouette_pixels"]
    # registry_uri too: an earlier in-process app may have pointed the global registry elsewhere
    client = MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)
    run_id = client.get_model_version_by_alias(SOURCE, "candidate").run_id
    logged = {a.path for a in client.list_artifacts(run_id, "explain_report")}
    expected = {"saliency.png", "grad_cam-layer2.png", "grad_cam-layer3.png", "random.png"}
    expected |= {"embeddings.png", "activations.png", "filters.png", "model_views.json"}
    assert {f"explain_report/{name}" for name in {*expected, "table.md", "table.csv"}} <= logged
    assert client.get_run(run_id).data.tags["modelplane.explain_report"] == f"{NAME}/1"
