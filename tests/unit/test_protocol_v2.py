"""Open Inference Protocol v2 routes on the tiny classify bundle, in-process."""

from __future__ import annotations

import json

import numpy as np
from fastapi.testclient import TestClient

from tests.tinymodels import linear_logits, tiny_classifier

ROWS = np.random.default_rng(3).normal(size=(3, 3, 8, 8)).astype(np.float32)


def test_server_and_model_metadata(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/classify").json()
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/classify/versions/1/ready").json()["ready"] is True
    assert client.get("/v2/models/classify/versions/7").status_code == 404
    assert "error" in client.get("/v2/models/other").json()


def test_json_infer_matches_the_reference(client: TestClient) -> None:
    body = {
        "id": "r1",
        "inputs": [
            {
                "name": "input",
                "shape": [3, 3, 8, 8],
                "datatype": "FP32",
                "data": ROWS.reshape(-1).tolist(),
            }
        ],
    }
    response = client.post("/v2/models/classify/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["id"] == "r1" and out["model_version"] == "1"
    logits = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(
        out["outputs"][0]["shape"]
    )
    np.testing.assert_allclose(logits, linear_logits(tiny_classifier(0), ROWS), atol=1e-4)


def test_binary_inputs_and_outputs(client: TestClient) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 3, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": ROWS.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/classify/versions/1/infer",
        content=header + ROWS.tobytes(),
        headers={
            "inference-header-content-length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 3 * 10 * 4
    logits = np.frombuffer(response.content[length:], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, linear_logits(tiny_classifier(0), ROWS), atol=1e-4)


def test_bad_v2_requests_get_400_with_an_error_body(client: TestClient) -> None:
    def infer(body: object) -> dict:
        # json.dumps writes NaN as a bare token, as non-strict clients do
        response = client.post(
            "/v2/models/classify/infer",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        return response.json()

    good = {"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}
    assert (
        "shape"
        in infer({"inputs": [{**good, "shape": [1, 3, 9, 8], "data": [0.0] * 216}]})["error"]
    )
    assert "FP32" in infer({"inputs": [{**good, "datatype": "FP64"}]})["error"]
    assert "values for shape" in infer({"inputs": [{**good, "data": [0.0] * 5}]})["error"]
    assert "takes inputs" in infer({"inputs": [{**good, "name": "x"}]})["error"]
    assert "NaN" in infer({"inputs": [{**good, "data": [float("nan")] * 192}]})["error"]
    assert "unknown output" in infer({"inputs": [good], "outputs": [{"name": "probs"}]})["error"]
    assert "'id'" in infer({"id": 2**70, "inputs": [good]})["error"]
    assert "twice" in infer({"inputs": [good, good]})["error"]
    assert "FP32" in infer({"inputs": [{**good, "data": ["0.5"] * 192}]})["error"]
    assert "inputs" in infer({"nothing": 1})["error"]
    # found by schemathesis: these were 500s
    assert "parameters" in infer({"inputs": [{**good, "parameters": [1]}]})["error"]
    assert "over the limit" in infer({"inputs": [{**good, "shape": [2**62] * 3}]})["error"]
    assert "parameters" in infer({"inputs": [good], "parameters": "binary"})["error"]
    assert "unknown output" in infer({"inputs": [good], "outputs": [{"name": []}]})["error"]
    assert "datatype" in infer({"inputs": [{**good, "datatype": {}}]})["error"]
    negative = {**good, "datatype": "UINT32", "data": [-1] * 192}
    assert "not UINT32" in infer({"inputs": [negative]})["error"]
    response = client.post(
        "/v2/models/classify/infer", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_v2_ready_turns_false_while_draining_like_readyz(client: TestClient) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert client.get("/v2/health/ready").status_code == 200
    runtime.start_draining()  # what SIGTERM does
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/health/ready").json() == {"ready": False}
    assert client.get("/readyz").status_code == 503
    assert client.get("/v2/health/live").json() == {"live": True}
