"""The explain service on a tiny model whose class depends on one region (tests/tinyexplain.py)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.methods import METHODS
from services.explain.service import ExplainService
from shared.app import create_app
from shared.bundle import read_manifest, write_manifest
from tests.procs import poll_until
from tests.tinyexplain import (
    LABELS,
    SIZE,
    b64,
    explain_client,
    one_torch_thread,
    positives,
    prep,
    region_settings,
    synthetic,
    trained_region_model,
    write_region_cache,
)
from tests.tinymodels import seed_cache


@pytest.fixture(scope="module")
def region_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache_dir = tmp_path_factory.mktemp("explain-cache")
    write_region_cache(cache_dir)
    return cache_dir


@pytest.fixture
def explain(region_cache: Path) -> Iterator[TestClient]:
    with one_torch_thread(), explain_client(region_cache) as client:
        yield client


def decode_png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)), formats=["PNG"])


VARIANTS = [
    ("integrated_gradients", {"baseline": "blurred", "blur_sigma": 2.0, "steps": 8}),
    ("integrated_gradients", {"baseline": "noise", "seed": 3, "steps": 8}),
    ("grad_cam", {"layer": "features.denseblock1"}),
    ("smoothgrad", {"base": "integrated_gradients", "steps": 4, "samples": 3}),
    ("smoothgrad", {"base": "grad_cam", "samples": 3, "nt_type": "vargrad"}),
    ("smoothgrad", {"base": "guided_grad_cam", "samples": 3, "nt_type": "smoothgrad_sq"}),
]


def test_every_method_returns_a_finite_heatmap_of_the_input_size(explain: TestClient) -> None:
    big = np.kron(positives(1)[0], np.ones((3, 2), np.uint8))  # 48 x 32: not the model's size
    for method, params in [(m, {}) for m in METHODS] + VARIANTS:
        body = {"image": b64(big), "method": method, "params": params, "return_map": True}
        response = explain.post("/v1/explain", json=body)
        assert response.status_code == 200, (method, response.text)
        result = response.json()
        assert decode_png(result["heatmap"]).size == (32, 48), method
        values = np.asarray(result["attribution"]["values"])
        assert values.shape == (SIZE, SIZE) and result["attribution"]["shape"] == [SIZE, SIZE]
        assert np.isfinite(values).all() and np.abs(values).max() <= 1.0 + 1e-6, method
        assert result["model"] == {"name": "region", "version": "1", "variant": "torch"}
        assert result["method"] == method and result["timing_ms"] >= 0
        assert {k: result["params"][k] for k in params} == params


def test_prediction_equals_the_pytorch_reference(explain: TestClient) -> None:
    images, _ = synthetic(6, 3)
    with torch.no_grad():
        probs = torch.softmax(trained_region_model()(prep(images)), dim=1).numpy()
    for image, expected in zip(images, probs, strict=True):
        response = explain.post("/v1/explain", json={"image": b64(image), "method": "saliency"})
        prediction = response.json()["prediction"]
        assert prediction["index"] == int(expected.argmax())
        assert prediction["label"] == LABELS[int(expected.argmax())]
        assert prediction["score"] == pytest.approx(float(expected.max()), abs=1e-5)


def region_share(explain: TestClient, image: np.ndarray, method: str) -> float:
    body = {"image": b64(image), "method": method, "target": 1, "return_map": True}
    values = np.asarray(explain.post("/v1/explain", json=body).json()["attribution"]["values"])
    positive = np.clip(values, 0, None)
    return float(positive[: SIZE // 2, : SIZE // 2].sum() / positive.sum())


@pytest.mark.parametrize("method", ["grad_cam", "cam", "integrated_gradients"])
def test_attribution_mass_lies_in_the_region_that_decides_the_class(
    explain: TestClient, method: str
) -> None:
    shares = [region_share(explain, image, method) for image in positives()]
    # the deciding quadrant is a quarter of the image; most of the mass must be there
    assert np.mean(shares) > 0.5, shares
    assert min(shares) > 0.4, shares


def test_ig_deletion_auc_is_lower_than_random_attribution(explain: TestClient) -> None:
    deletion: dict[str, list[float]] = {"integrated_gradients": [], "random": []}
    for image in positives(6):
        body = {"image": b64(image), "methods": list(deletion), "target": 1}
        response = explain.post("/v1/explain/compare", json=body)
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            deletion[result["method"]].append(result["fidelity"]["deletion_auc"])
    assert np.mean(deletion["integrated_gradients"]) < np.mean(deletion["random"]), deletion


def test_compare_returns_one_panel_tile_per_method_and_their_fidelity(
    explain: TestClient,
) -> None:
    methods = ["saliency", "grad_cam", "occlusion", "random"]
    body = {
        "image": b64(positives(1)[0]),
        "methods": methods,
        "params": {"occlusion": {"window": 3}},
    }
    response = explain.post("/v1/explain/compare", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert [r["method"] for r in result["results"]] == methods
    assert result["results"][2]["params"] == {"window": 3, "stride": 2}
    panel = decode_png(result["panel"])
    assert panel.width > len(methods) * panel.height  # input + one tile per method, side by side
    for entry in result["results"]:
        fidelity = entry["fidelity"]
        assert 0 <= fidelity["deletion_auc"] <= 1 and 0 <= fidelity["insertion_auc"] <= 1
        assert 0 <= fidelity["gini"] <= 1 and 0 < fidelity["top10_mass"] <= 1
        captum_scored = entry["method"] != "random"
        assert (fidelity["infidelity"] is not None) == captum_scored
        assert (fidelity["sensitivity"] is not None) == captum_scored


def test_explain_with_fidelity_scores_the_explanation(explain: TestClient) -> None:
    body = {"image": b64(positives(1)[0]), "method": "integrated_gradients", "fidelity": True}
    result = explain.post("/v1/explain", json=body).json()
    assert result["params"] == {"steps": 32, "baseline": "black", "blur_sigma": 4.0, "seed": 0}
    fidelity = result["fidelity"]
    assert fidelity["infidelity"] >= 0 and fidelity["sensitivity"] >= 0
    assert "attribution" not in result or result["attribution"] is None


def test_activations_grid_shows_the_strongest_channels(explain: TestClient) -> None:
    body = {"image": b64(positives(1)[0]), "layer": "features.denseblock1", "top_n": 5}
    result = explain.post("/v1/explain/activations", json=body).json()
    assert result["layer"] == "features.denseblock1" and result["shape"] == [16, SIZE, SIZE]
    means = [c["mean_activation"] for c in result["channels"]]
    assert len(means) == 5 and means == sorted(means, reverse=True)
    assert decode_png(result["grid"]).width > 0


def test_filters_of_the_first_conv_layer(explain: TestClient) -> None:
    result = explain.get("/v1/explain/filters").json()
    assert result["layer"] == "features.conv0" and result["shape"] == [8, 1, 3, 3]
    assert decode_png(result["grid"]).height > 0


def test_model_info_lists_methods_layers_and_the_default_layer(explain: TestClient) -> None:
    info = explain.get("/v1/model").json()
    assert info["default_layer"] == "features.denseblock2"
    choice = info["default_layer_choice"]
    assert choice["measured_on"] == "4 sample inputs of the bundle"
    measured = {row["layer"]: row for row in choice["layers"]}
    assert set(measured) == {"features.denseblock1", "features.denseblock2"}  # the blocks
    best = measured[info["default_layer"]]
    assert best["resolution"] == [SIZE // 2, SIZE // 2]
    assert all(best["fidelity"] >= row["fidelity"] - 1e-3 for row in measured.values())
    assert info["layers"]["features.denseblock2"] == [16, SIZE // 2, SIZE // 2]
    assert "smoothgrad" in info["methods"] and info["max_evaluations"] == 2048


def test_a_bundle_without_torch_weights_is_never_served(tmp_path: Path) -> None:
    seed_cache(tmp_path / "cache")  # a tiny ONNX-only classify bundle
    settings = region_settings(tmp_path / "cache", "models:/classify@production")
    with TestClient(create_app(ExplainService, settings)) as client:

        def load_error() -> Any:  # the first load attempt runs in the background after start
            answer = client.get("/readyz")
            return answer if "torch weights" in answer.text else None

        readyz = poll_until(load_error, 20, "the load error")
        assert readyz.status_code == 503
        assert "is not a classify bundle with torch weights" in readyz.json()["detail"]


@pytest.mark.parametrize("agrees", [True, False])
def test_torch_weights_are_checked_against_the_fp32_exports_outputs(
    tmp_path: Path, agrees: bool
) -> None:
    """The served bundle's smoke arrays come from the ONNX export: the weights must match them."""
    bundle_dir = write_region_cache(tmp_path / "cache")
    sample = prep(synthetic(4, 5)[0])
    with torch.no_grad():
        expected = trained_region_model()(sample).numpy()
    np.save(bundle_dir / "sample_inputs.npy", sample.numpy())
    np.save(bundle_dir / "expected_outputs.fp32.npy", expected if agrees else expected + 0.01)
    manifest = read_manifest(bundle_dir)
    manifest["sample_inputs"] = "sample_inputs.npy"
    manifest["variants"]["fp32"] = {
        "file": "weights.safetensors",
        "expected_outputs": "expected_outputs.fp32.npy",
    }
    write_manifest(bundle_dir, {k: v for k, v in manifest.items() if k != "files"})
    with (
        one_torch_thread(),
        TestClient(create_app(ExplainService, region_settings(tmp_path / "cache"))) as client,
    ):

        def settled() -> Any:
            answer = client.get("/readyz")
            return answer if answer.status_code == 200 or "disagree" in answer.text else None

        readyz = poll_until(settled, 20, "loaded or refused")
        assert (readyz.status_code == 200) == agrees, readyz.text
        if not agrees:
            assert "the torch weights disagree with the fp32 export by 1.00e-02" in readyz.text
