"""Explicit model control (the protocol's model repository extension) against a real MLflow
registry and a real classify process: pin a version under load without a failed request,
refuse a broken one while the old keeps serving, return to the alias; REST and gRPC."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from shared.bundle import read_manifest, write_manifest
from shared.registration import register, use_tracking_server
from tests.procs import free_port, poll_until, running, wait_http
from tests.tinymodels import linear_logits, tiny_classifier, write_tiny_bundle

NAME = "controlled"
TOKEN = "control-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Controlled:
    url: str
    grpc_target: str
    versions: dict[int, str]  # seed -> registered version; seed 0 is the broken one


def broken_bundle(directory: Path) -> Path:
    """Checksummed and well-formed, but its smoke test cannot pass (wrong expected outputs)."""
    write_tiny_bundle(directory, name=NAME, seed=9)
    expected = directory / "expected_outputs.fp32.npy"
    np.save(expected, np.load(expected) + 1.0)
    write_manifest(directory, read_manifest(directory))
    return directory


@pytest.fixture(scope="module")
def controlled(
    mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Controlled]:
    root = tmp_path_factory.mktemp("control")
    use_tracking_server(mlflow_server)
    mlflow.set_experiment("model-control-test")
    versions = []
    for bundle, alias in (
        (write_tiny_bundle(root / "v1", name=NAME, seed=1), "production"),
        (write_tiny_bundle(root / "v2", name=NAME, seed=2), None),
        (broken_bundle(root / "broken"), None),
    ):
        with mlflow.start_run():  # one run per version: each logs its bundle as `bundle`
            versions.append(register(bundle, NAME, alias=alias))
    v1, v2, broken = versions
    port, grpc_port = free_port(), free_port()
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MODEL_URI": f"models:/{NAME}@production",
        "MODEL_CACHE_DIR": str(root / "cache"),
        "MODEL_CONTROL": "true",
        "API_TOKEN": TOKEN,
        "GRPC_PORT": str(grpc_port),
        "ONNX_INTRA_OP_THREADS": "1",
        "LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    with running(cmd, root / "service.log", env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc, root / "service.log")
        yield Controlled(url, f"127.0.0.1:{grpc_port}", {1: v1, 2: v2, 0: broken})


X = np.random.default_rng(5).normal(size=(3, 3, 8, 8)).astype(np.float32)


def infer(url: str) -> tuple[int, str, np.ndarray | None]:
    """One V2 inference: status, the version that answered, the logits."""
    body = {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32"}]}
    body["inputs"][0]["data"] = X.reshape(-1).tolist()
    answer = httpx.post(f"{url}/v2/models/{NAME}/infer", json=body, headers=AUTH, timeout=10)
    if answer.status_code != 200:
        return answer.status_code, "", None
    out = answer.json()["outputs"][0]
    return 200, answer.json()["model_version"], np.array(out["data"]).reshape(out["shape"])


def control(url: str, action: str, body: dict[str, object] | None = None) -> httpx.Response:
    path = "index" if action == "index" else f"models/{NAME}/{action}"
    return httpx.post(f"{url}/v2/repository/{path}", json=body or {}, headers=AUTH, timeout=60)


def test_index_lists_the_registered_versions_and_the_loaded_one(controlled: Controlled) -> None:
    answer = control(controlled.url, "index")
    assert answer.status_code == 200
    states = {entry["version"]: entry["state"] for entry in answer.json()}
    v1 = controlled.versions[1]
    assert states == {
        v: "READY" if v == v1 else "UNAVAILABLE" for v in controlled.versions.values()
    }
    assert "following the alias" in next(e["reason"] for e in answer.json() if e["version"] == v1)


def test_control_needs_the_token(controlled: Controlled) -> None:
    answer = httpx.post(f"{controlled.url}/v2/repository/index", timeout=10)
    assert answer.status_code == 401


def test_pin_under_load_refuse_broken_and_unload(controlled: Controlled) -> None:
    v1, v2, broken = (controlled.versions[k] for k in (1, 2, 0))
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, version, _ = infer(controlled.url)
            answers.append((status, version))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        poll_until(lambda: len(answers) >= 5, 30, "answers from version 1")
        pinned = control(controlled.url, "load", {"parameters": {"version": v2}})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json() == {"name": NAME, "version": v2, "pinned": True}
        served = len(answers)
        poll_until(lambda: len(answers) >= served + 5, 30, "answers after the switch")
    finally:
        stop.set()
        worker.join(timeout=15)
    assert {status for status, _ in answers} == {200}
    versions = [version for _, version in answers]
    assert versions[0] == v1 and versions[-1] == v2
    assert set(versions[versions.index(v2) :]) == {v2}  # switched once
    _, version, logits = infer(controlled.url)
    assert version == v2
    np.testing.assert_allclose(logits, linear_logits(tiny_classifier(seed=2), X), atol=1e-4)

    refused = control(controlled.url, "load", {"parameters": {"version": broken}})
    assert refused.status_code == 409
    assert (
        "cannot be served" in refused.json()["error"]
        and f"still serving version {v2}" in (refused.json()["error"])
    )
    assert infer(controlled.url)[1] == v2
    bad = control(controlled.url, "load", {"parameters": {}})
    assert bad.status_code == 400 and "version" in bad.json()["error"]

    back = control(controlled.url, "unload")
    assert back.status_code == 200 and back.json() == {"name": NAME, "version": v1, "pinned": False}
    assert infer(controlled.url)[1] == v1


def test_the_same_over_grpc(controlled: Controlled) -> None:
    v1, v2 = controlled.versions[1], controlled.versions[2]
    client = tgrpc.InferenceServerClient(url=controlled.grpc_target)
    try:
        assert "model_repository" in client.get_server_metadata(headers=AUTH).extensions
        index = client.get_model_repository_index(headers=AUTH)
        assert {m.version for m in index.models} == set(controlled.versions.values())
        import grpc

        with grpc.insecure_channel(controlled.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.RepositoryModelLoadRequest(model_name=NAME)
            request.parameters["version"].string_param = v2
            stub.RepositoryModelLoad(request, metadata=tuple(AUTH.items()))
            assert infer(controlled.url)[1] == v2
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(request)  # no token
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        client.unload_model(NAME, headers=AUTH)
        assert infer(controlled.url)[1] == v1
    finally:
        client.close()


def test_model_control_without_a_token_refuses_to_start() -> None:
    from services.classify.service import ClassifyService
    from shared.app import create_app
    from shared.settings import ServingSettings

    with pytest.raises(ValueError, match="MODEL_CONTROL needs API_TOKEN"):
        create_app(ClassifyService, ServingSettings(model_control=True), load=False)
