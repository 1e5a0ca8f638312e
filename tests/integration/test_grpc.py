"""The Open Inference Protocol over gRPC against a real classify process, with tritonclient.grpc.

The service serves a ridge-regression digit classifier from its verified cache (registry down),
with an API token; answers are checked against numpy, against REST for the same rows, and
against the digits' true labels.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from shared.media import decode_image, image_to_array
from tests.procs import free_port, poll_until
from tests.tinymodels import SPEC, digit_png, linear_logits, seed_cache, tiny_classifier
from tests.tinyserve import Served, seed_two_speed_cache, serve_cached, v2_logits_over_rest

TOKEN = "grpc-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
METADATA = (("authorization", f"Bearer {TOKEN}"),)


@dataclass(frozen=True)
class Both:
    """One classify process speaking REST on `url` and gRPC on `target`."""

    url: str
    target: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    root = tmp_path_factory.mktemp("grpc")
    seed_cache(root / "cache", fitted=True)
    port = free_port()
    env = {"API_TOKEN": TOKEN, "GRPC_PORT": str(port)}
    with serve_cached("classify", root / "cache", root / "classify.log", env) as service:
        yield Both(service.url, f"127.0.0.1:{port}")


@pytest.fixture
def client(served: Both) -> Iterator[tgrpc.InferenceServerClient]:
    triton = tgrpc.InferenceServerClient(url=served.target)
    yield triton
    triton.close()


@cache
def held_out_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` held-out digits as the model's input tensor, and their true labels."""
    rows, labels = [], []
    for index in range(count):
        png, label = digit_png(index)
        rows.append(image_to_array(decode_image(png, 64), SPEC))
        labels.append(label)
    return np.stack(rows).astype(np.float32), np.array(labels)


def infer_input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def refused(call: object, code: str) -> str:
    """Run `call`, expect the gRPC status `code`; return the server's message."""
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    assert caught.value.status() == f"StatusCode.{code}", caught.value.message()
    return str(caught.value.message())


def test_health_metadata_and_reflection(served: Both, client: tgrpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()  # open, like /readyz
    assert client.is_model_ready("classify", headers=AUTH)
    server = client.get_server_metadata(headers=AUTH)
    assert server.name == "modelplane"
    metadata = client.get_model_metadata("classify", headers=AUTH)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("input", "FP32", [-1, 3, 8, 8])
    ]
    assert [(t.name, t.datatype) for t in metadata.outputs] == [("logits", "FP32")]
    with grpc.insecure_channel(served.target) as channel:
        checked = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([asked])
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert names >= {"inference.GRPCInferenceService", "grpc.health.v1.Health"}


def test_infer_agrees_with_numpy_rest_and_the_true_labels(
    served: Both, client: tgrpc.InferenceServerClient
) -> None:
    x, labels = held_out_digits(64)
    expected = linear_logits(tiny_classifier(fitted=True), x)
    raw = client.infer("classify", [infer_input(x)], headers=AUTH).as_numpy("logits")
    np.testing.assert_allclose(raw, expected, atol=1e-4)
    # a classifier that learned nothing is right on ~10% of digits
    assert (raw.argmax(axis=1) == labels).mean() > 0.8

    typed = pb.ModelInferRequest(model_name="classify", id="typed-1")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(served.target) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed, metadata=METADATA)
    assert answer.id == "typed-1" and answer.model_name == "classify"
    from_typed = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(raw.shape)
    np.testing.assert_array_equal(from_typed, raw)

    over_rest = v2_logits_over_rest(served.url.removeprefix("http://"), x, AUTH)
    np.testing.assert_array_equal(raw, over_rest)


def test_output_selection(client: tgrpc.InferenceServerClient) -> None:
    x, _ = held_out_digits(2)
    wanted = [tgrpc.InferRequestedOutput("logits")]
    result = client.infer("classify", [infer_input(x)], outputs=wanted, headers=AUTH)
    assert [o.name for o in result.get_response().outputs] == ["logits"]
    unknown = [tgrpc.InferRequestedOutput("probabilities")]
    message = refused(
        lambda: client.infer("classify", [infer_input(x)], outputs=unknown, headers=AUTH),
        "INVALID_ARGUMENT",
    )
    assert "unknown output 'probabilities'" in message and "logits" in message


def test_bad_inputs_are_invalid_argument_with_the_reason(
    served: Both, client: tgrpc.InferenceServerClient
) -> None:
    x, _ = held_out_digits(2)

    def infer(*tensors: tgrpc.InferInput) -> object:
        return lambda: client.infer("classify", list(tensors), headers=AUTH)

    shape = refused(infer(infer_input(np.zeros((2, 3, 5, 5), np.float32))), "INVALID_ARGUMENT")
    assert "must have shape [-1, 3, 8, 8]" in shape
    dtype = refused(infer(infer_input(x.astype(np.float64), datatype="FP64")), "INVALID_ARGUMENT")
    assert "must be FP32, got FP64" in dtype
    name = refused(infer(infer_input(x, name="pixels")), "INVALID_ARGUMENT")
    assert "takes inputs ['input']" in name
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    assert "NaN" in refused(infer(infer_input(nan)), "INVALID_ARGUMENT")
    assert "not served here" in refused(
        lambda: client.infer("nope", [infer_input(x)], headers=AUTH), "NOT_FOUND"
    )

    short = pb.ModelInferRequest(model_name="classify")
    short.inputs.add(name="input", datatype="FP32", shape=[2, 3, 8, 8])
    short.raw_input_contents.append(x.tobytes()[:-4])
    wrong_field = pb.ModelInferRequest(model_name="classify")
    tensor = wrong_field.inputs.add(name="input", datatype="FP32", shape=[1, 3, 8, 8])
    tensor.contents.int_contents.extend([1] * 192)
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for request, reason in ((short, "binary_data_size"), (wrong_field, "fp32_contents")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, metadata=METADATA)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in str(caught.value.details())


def test_calls_need_the_token_but_health_does_not(client: tgrpc.InferenceServerClient) -> None:
    x, _ = held_out_digits(1)
    refused(lambda: client.infer("classify", [infer_input(x)]), "UNAUTHENTICATED")
    wrong = {"authorization": "Bearer not-the-token"}
    refused(lambda: client.get_model_metadata("classify", headers=wrong), "UNAUTHENTICATED")
    assert client.is_server_ready()


def test_metrics_count_calls_per_method_and_status(
    served: Both, client: tgrpc.InferenceServerClient
) -> None:
    def count(method: str, code: str) -> float:
        text = httpx.get(f"{served.url}/metrics", timeout=10).text
        labels = f'code="{code}",method="{method}",service="classify"'
        pattern = r"modelplane_grpc_requests_total\{" + labels + r"\} (\S+)"
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    before_ok, before_bad = count("ModelInfer", "OK"), count("ModelInfer", "INVALID_ARGUMENT")
    x, _ = held_out_digits(1)
    for _ in range(3):
        client.infer("classify", [infer_input(x)], headers=AUTH)
    refused(
        lambda: client.infer("classify", [infer_input(x, name="x")], headers=AUTH),
        "INVALID_ARGUMENT",
    )
    assert count("ModelInfer", "OK") == before_ok + 3
    assert count("ModelInfer", "INVALID_ARGUMENT") == before_bad + 1


@contextmanager
def slow_service(root: Path) -> Iterator[tuple[Served, tgrpc.InferenceServerClient]]:
    """classify serving a genuinely slow variant (tests/tinyserve.py: a 1024-row batch takes
    ~0.3 s on one thread, its weights 64 MB), one batch at a time, and a gRPC client of it."""
    seed_two_speed_cache(root / "cache", width=512, layers=64)
    port = free_port()
    settings = {
        "MODEL_VARIANT": "slow",
        "INFERENCE_WORKERS": "1",
        "MAX_BATCH_SIZE": str(BATCH),
        "MAX_QUEUE": str(16 * BATCH),  # every row of a call waits in the queue as an item
        "GRPC_PORT": str(port),
    }
    with serve_cached("classify", root / "cache", root / "slow.log", settings) as service:
        client = tgrpc.InferenceServerClient(url=f"127.0.0.1:{port}")
        try:
            yield service, client
        finally:
            client.close()


BATCH = 1024


def test_deadline_and_sigterm_drain_behind_a_slow_batch(tmp_path: Path) -> None:
    """A call whose gRPC deadline passes while it waits behind a batch in predict ends
    DEADLINE_EXCEEDED (the server counts it so) while the batch ahead is answered; then
    SIGTERM while a two-batch call is in predict: it is still answered in full (its second
    batch runs), and the process exits."""
    with slow_service(tmp_path) as (service, client):
        x = np.zeros((BATCH, 3, 8, 8), np.float32)
        answers: list[object] = []

        def collect(result: object, error: object) -> None:
            answers.append(result or error)

        # eight batches, one after another: the late call waits behind at least seven (>2 s
        # idle, more under load), while its 1 s deadline leaves time to reach the server's
        # handler on a loaded machine (a call that expires before it is counted nowhere)
        client.async_infer("classify", [infer_input(np.concatenate([x] * 8))], collect)
        poll_until(lambda: batches_started(service.url) >= 1, 30, "its first batch in predict")
        late = [infer_input(x[:1])]
        refused(lambda: client.infer("classify", late, client_timeout=1.0), "DEADLINE_EXCEEDED")
        poll_until(lambda: answers, 60, "the slow call's answer")
        assert answers.pop().as_numpy("logits").shape == (8 * BATCH, 10)  # type: ignore[attr-defined]
        poll_until(
            lambda: 'code="DEADLINE_EXCEEDED",method="ModelInfer"' in scrape(service.url),
            10,
            "the server's DEADLINE_EXCEEDED count",
        )

        batches = batches_started(service.url)
        client.async_infer("classify", [infer_input(np.concatenate([x, x]))], collect)
        poll_until(lambda: batches_started(service.url) > batches, 30, "a batch in predict")
        service.proc.send_signal(signal.SIGTERM)
        poll_until(lambda: answers, 60, "the drained call's answer")
        assert answers[0].as_numpy("logits").shape == (2 * BATCH, 10)  # type: ignore[attr-defined]
        assert service.proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def batches_started(url: str) -> float:
    found = re.search(r"modelplane_batch_size_count\{[^}]*\} (\S+)", scrape(url))
    return float(found.group(1)) if found else 0.0


def test_model_control_is_off_by_default(served: Both, client: tgrpc.InferenceServerClient) -> None:
    answer = httpx.post(f"{served.url}/v2/repository/index", headers=AUTH, timeout=10)
    assert answer.status_code == 404
    message = refused(lambda: client.get_model_repository_index(headers=AUTH), "UNIMPLEMENTED")
    assert "MODEL_CONTROL" in message
