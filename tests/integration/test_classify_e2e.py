"""Train --quick → export → serve, all real: MLflow server, training and export jobs, uvicorn."""

from __future__ import annotations

import base64
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from shared.media import ImageSpec, encode_png, gray_to_image
from shared.registry import RegistryClient
from tests.procs import (
    free_port,
    poll_until,
    readyz_saying,
    run_module,
    running,
    tail,
    wait_http,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Exported:
    tracking_uri: str
    export_log: str
    workdir: Path


@pytest.fixture(scope="module")
def exported(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    workdir = tmp_path_factory.mktemp("classify")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    run_module("training.classify", "--quick", env=env, log=workdir / "train.log")
    output = run_module(
        "training.export",
        "classify",
        "--cache-dir",
        str(workdir / "export-cache"),
        # fp32 only (the default then): every variant is covered by test_export.py
        "--variants",
        "fp32",
        "--skip-study",
        "--quick",
        env=env,
        log=workdir / "export.log",
    )
    return Exported(mlflow_server, output, workdir)


@dataclass(frozen=True)
class Served:
    url: str
    log: Path
    cache: Path


def serve(exported: Exported, name: str, tracking_uri: str | None = None) -> Iterator[Served]:
    cache = exported.workdir / f"cache-{name}"
    port = free_port()
    log = exported.workdir / f"{name}.log"
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri or exported.tracking_uri,
        "MODEL_CACHE_DIR": str(cache),
        "ONNX_INTRA_OP_THREADS": "1",
        "LOG_JSON": "true",
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    with running(cmd, log, env) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout_s=90)
        yield Served(f"http://127.0.0.1:{port}", log, cache)


@pytest.fixture(scope="module")
def service(exported: Exported) -> Iterator[Served]:
    yield from serve(exported, "main")


def test_export_moved_production_with_parity(exported: Exported) -> None:
    client = MlflowClient(tracking_uri=exported.tracking_uri, registry_uri=exported.tracking_uri)
    production = client.get_model_version_by_alias("classify", "production")
    candidate = client.get_model_version_by_alias("classify-torch", "candidate")
    assert production.tags["source_model"] == "classify-torch"
    assert production.tags["source_version"] == candidate.version
    run = client.get_run(production.run_id)
    assert run.data.metrics["parity_max_abs_diff"] <= 1e-4
    assert run.data.metrics["parity_top1_agreement"] == 1.0
    assert "moved @production" in exported.export_log


def test_service_agrees_with_pytorch_on_held_out_digits(
    exported: Exported, service: Served
) -> None:
    import torch

    from models.classify import load_torch_bundle
    from training.data import load_splits, load_test_set

    registry_client = RegistryClient(exported.tracking_uri)
    source = registry_client.fetch(
        "models:/classify-torch@candidate", exported.workdir / "ref-cache"
    ).bundle
    spec = ImageSpec.from_manifest(source.preprocessing)
    test = load_test_set(spec, source.preprocessing.get("classes"))
    with torch.no_grad():
        reference = load_torch_bundle(source)(torch.from_numpy(test.inputs)).numpy().argmax(1)
    labels = source.labels
    agree = correct = 0
    with httpx.Client(base_url=service.url, timeout=30) as http:
        for pixels, ref, truth in zip(test.images, reference, test.labels, strict=True):
            response = http.post(
                "/v1/classify?top_k=1",
                content=encode_png(gray_to_image(pixels)),
                headers={"content-type": "image/png"},
            )
            assert response.status_code == 200, response.text
            served = response.json()["predictions"][0]["label"]
            agree += served == labels[ref]
            correct += served == labels[truth]
    assert agree / len(test.images) >= 0.99, f"{agree}/{len(test.images)} agree"
    # the served model learned the digits: far above always answering the majority class (10%)
    majority = np.bincount(load_splits()["train"].labels).argmax()
    baseline = float(np.mean(test.labels == majority))
    assert correct / len(test.images) >= baseline + 0.4, (correct, len(test.images), baseline)


def metric_value(text: str, prefix: str) -> float:
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    ]
    return sum(values)


def test_metrics_move_after_requests(service: Served) -> None:
    pixels = (np.eye(8) * 255).astype(np.uint8)
    body = {"image": base64.b64encode(encode_png(gray_to_image(pixels))).decode()}
    with httpx.Client(base_url=service.url, timeout=30) as http:
        before = http.get("/metrics").text
        for _ in range(5):
            assert http.post("/v1/classify", json=body).status_code == 200
        after = http.get("/metrics").text
    counter = (
        'modelplane_requests_total{method="POST",route="/v1/classify",service="classify",'
        'status="200"}'
    )
    hist = 'modelplane_request_duration_seconds_count{method="POST",route="/v1/classify"'
    assert metric_value(after, counter) - metric_value(before, counter) == 5
    assert metric_value(after, hist) - metric_value(before, hist) == 5
    infer = 'modelplane_inference_duration_seconds_count{service="classify"}'
    assert metric_value(after, infer) - metric_value(before, infer) == 5
    assert (
        'modelplane_model_info{name="classify",service="classify",variant="fp32",version="1"} 1.0'
        in after
    )
    assert metric_value(after, 'modelplane_model_load_seconds{service="classify"}') > 0


def test_model_info_and_docs(service: Served) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        info = http.get("/v1/model").json()
        assert (info["name"], info["variant"]) == ("classify", "fp32")
        assert info["source_run"] and info["inputs"][0]["shape"][0] == -1
        assert http.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_bad_inputs_get_their_4xx_over_http(service: Served) -> None:
    png = encode_png(gray_to_image(np.zeros((8, 8), dtype=np.uint8)))
    cases = [
        ({"content": b"GIF89a", "headers": {"content-type": "image/gif"}}, 415),
        ({"content": b"not an image", "headers": {"content-type": "image/png"}}, 400),
        ({"content": png[:30], "headers": {"content-type": "image/png"}}, 400),
        ({"content": b"\0" * (9 * 1024 * 1024), "headers": {"content-type": "image/png"}}, 413),
    ]
    image = {"content": png, "headers": {"content-type": "image/png"}}
    cases += [({**image, "params": {"top_k": k}}, 422) for k in (0, 1001)]
    with httpx.Client(base_url=service.url, timeout=30) as http:
        for kwargs, status in cases:
            response = http.post("/v1/classify", **kwargs)
            assert response.status_code == status, (kwargs.get("headers"), response.text)
            assert response.headers["content-type"] == "application/problem+json"
        assert http.get("/readyz").status_code == 200  # still serving after all of that
    assert "Traceback" not in tail(service.log, 400)


def test_tampered_cached_artifact_is_refused(exported: Exported) -> None:
    """A flipped byte in the cache is never served: re-downloaded when the registry is up,
    and a refusal to become ready (with the reason) when it is not."""
    served = serve(exported, "tamper")
    first = next(served)
    model_file = first.cache / "classify" / "1" / "model.onnx"
    served.close()
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))

    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    log = exported.workdir / "tamper-offline.log"
    env = {
        "MLFLOW_TRACKING_URI": dead,
        "MODEL_CACHE_DIR": str(first.cache),
        "ONNX_INTRA_OP_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    with running(cmd, log, env) as proc:
        wait_http(f"http://127.0.0.1:{port}/livez", proc, log)
        readyz = poll_until(  # the first load attempt runs right after start
            lambda: readyz_saying(f"http://127.0.0.1:{port}", "checksum mismatch"),
            10,
            "the load failure reported",
        )
        assert readyz.status_code == 503
        assert "checksum mismatch for 'model.onnx'" in readyz.json()["detail"]

    refreshed = serve(exported, "tamper")  # registry up: the corrupt copy is replaced
    again = next(refreshed)
    assert httpx.get(f"{again.url}/readyz", timeout=5).status_code == 200
    assert "discarding corrupt cached bundle" in again.log.read_text()
    refreshed.close()
    shutil.rmtree(first.cache)


def test_open_inference_protocol_v2_with_tritonclient(service: Served) -> None:
    """A standard V2 client (tritonclient) against the real service: JSON and binary tensors."""
    import tritonclient.http as triton

    from shared.bundle import open_bundle
    from shared.onnx import OnnxModel

    info = httpx.get(f"{service.url}/v1/model", timeout=10).json()
    bundle = open_bundle(service.cache / "classify" / info["version"])
    shape = [4, *bundle.inputs[0].shape[1:]]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = OnnxModel.from_bundle(bundle, info["variant"], 1).run({"input": x})[0]

    client = triton.InferenceServerClient(url=service.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("classify")
        metadata = client.get_model_metadata("classify")
        assert metadata["inputs"][0]["datatype"] == "FP32"
        for binary in (False, True):
            tensor = triton.InferInput("input", shape, "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            wanted = triton.InferRequestedOutput("logits", binary_data=binary)
            result = client.infer("classify", [tensor], outputs=[wanted])
            np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-4)
        wrong = triton.InferInput("input", [1, 3, 5, 5], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 3, 5, 5), dtype=np.float32))
        with pytest.raises(Exception, match="shape"):
            client.infer("classify", [wrong])
    finally:
        client.close()
