"""The shared runtime, exercised through the classify service on a tiny ONNX bundle."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from services.classify.service import ClassifyService
from shared.app import create_app
from shared.media import gray_to_image, image_to_array
from shared.settings import ServingSettings
from tests.procs import free_port
from tests.tinymodels import LABELS, SPEC, linear_logits, tiny_classifier
from tests.unit.conftest import png_bytes, wait_ready

DIGIT = (np.arange(64).reshape(8, 8) * 4 % 256).astype(np.uint8)


def expected_top1(pixels: np.ndarray) -> str:
    x = image_to_array(gray_to_image(pixels), SPEC)[None]
    return LABELS[int(linear_logits(tiny_classifier(0), x).argmax())]


def test_readyz_is_503_until_model_loaded(settings: ServingSettings) -> None:
    app = create_app(ClassifyService, settings, load=False)
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/livez").status_code == 200
        assert (
            client.post(
                "/v1/classify", content=png_bytes(DIGIT), headers={"content-type": "image/png"}
            ).status_code
            == 503
        )
        runtime = app.state.runtime
        runtime.activate(runtime.load_once())
        assert client.get("/readyz").json()["model"] == {
            "name": "classify",
            "version": "1",
            "variant": "fp32",
        }


def test_classify_json_raw_and_multipart_agree_with_reference(client: TestClient) -> None:
    png = png_bytes(DIGIT)
    answers = [
        client.post("/v1/classify", json={"image": base64.b64encode(png).decode(), "top_k": 3}),
        client.post("/v1/classify?top_k=3", content=png, headers={"content-type": "image/png"}),
        client.post("/v1/classify?top_k=3", files={"file": ("d.png", png, "image/png")}),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == {"name": "classify", "version": "1", "variant": "fp32"}
        assert len(body["predictions"]) == 3
        scores = [p["score"] for p in body["predictions"]]
        assert scores == sorted(scores, reverse=True)
        assert body["predictions"][0]["label"] == expected_top1(DIGIT)
    assert answers[0].json() == answers[1].json() == answers[2].json()


def test_colour_and_larger_images_are_converted_and_resized(client: TestClient) -> None:
    big = np.kron(DIGIT, np.ones((4, 4), dtype=np.uint8))  # 32x32, same digit
    rgb = Image.fromarray(np.stack([big] * 3, axis=-1))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=95)
    response = client.post(
        "/v1/classify", content=buffer.getvalue(), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 5


def test_model_info_reports_version_variant_and_threads(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert (info["name"], info["version"], info["variant"]) == ("classify", "1", "fp32")
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 3, 8, 8]}]
    assert info["threads"]["onnx_intra_op"] == 1
    assert info["from_cache_only"] is True


def problem(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]


def test_bad_inputs_get_clear_4xx(client: TestClient) -> None:
    png = png_bytes(DIGIT)
    problem(
        client.post("/v1/classify", content=b"hello", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    problem(
        client.post("/v1/classify", content=b"not an image", headers={"content-type": "image/png"}),
        400,
        "invalid_input",
    )
    problem(
        client.post(
            "/v1/classify", content=png[: len(png) // 2], headers={"content-type": "image/png"}
        ),
        400,
        "invalid_input",
    )
    problem(client.post("/v1/classify", json={"image": "%%%not base64"}), 400, "invalid_input")
    problem(client.post("/v1/classify", json={"picture": "x"}), 422, "invalid_parameter")
    problem(
        client.post("/v1/classify", content=b"{", headers={"content-type": "application/json"}),
        422,
        "invalid_parameter",
    )
    problem(
        client.post("/v1/classify?top_k=0", content=png, headers={"content-type": "image/png"}),
        422,
        "validation_error",
    )
    every = client.post("/v1/classify?top_k=11", content=png, headers={"content-type": "image/png"})
    assert len(every.json()["predictions"]) == len(LABELS)  # more than there are: all of them
    problem(
        client.post("/v1/classify", files={"other": ("d.png", png, "image/png")}),
        400,
        "invalid_input",
    )


def test_body_over_limit_is_413(client: TestClient) -> None:
    problem(
        client.post(
            "/v1/classify", content=b"\0" * (65 * 1024), headers={"content-type": "image/png"}
        ),
        413,
        "payload_too_large",
    )

    def chunks():  # no content-length: the limit is enforced while streaming
        for _ in range(70):
            yield b"\0" * 1024

    problem(
        client.post("/v1/classify", content=chunks(), headers={"content-type": "image/png"}),
        413,
        "payload_too_large",
    )


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge image, followed by a tiny compressed body."""
    raw = zlib.compress(b"\0" * 64)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_image_over_pixel_limit_is_refused_before_decoding(client: TestClient) -> None:
    problem(
        client.post(
            "/v1/classify", content=bomb_png(50_000, 50_000), headers={"content-type": "image/png"}
        ),
        413,
        "payload_too_large",
    )
    problem(
        client.post(
            "/v1/classify", content=bomb_png(300, 300), headers={"content-type": "image/png"}
        ),
        413,
        "payload_too_large",
    )


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    png = png_bytes(DIGIT)
    for _ in range(3):
        client.post("/v1/classify", content=png, headers={"content-type": "image/png"})
    client.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"})
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert (
        'modelplane_requests_total{method="POST",route="/v1/classify",service="classify",'
        'status="200"} 3.0'
    ) in text
    assert 'route="/v1/classify",service="classify",status="415"} 1.0' in text
    assert 'route="unmatched"' in text and "/no/such/path" not in text
    assert 'modelplane_inference_duration_seconds_count{service="classify"} 3.0' in text
    assert (
        'modelplane_model_info{name="classify",service="classify",variant="fp32",version="1"} 1.0'
        in text
    )
    assert 'modelplane_ready{service="classify"} 1.0' in text


def test_metrics_port_serves_metrics_apart_from_the_api(settings: ServingSettings) -> None:
    port = free_port()
    split = settings.model_copy(update={"metrics_port": port})
    with TestClient(create_app(ClassifyService, split)) as client:
        wait_ready(client)
        client.post("/v1/classify", content=png_bytes(DIGIT), headers={"content-type": "image/png"})
        assert client.get("/metrics").status_code == 404  # not on the API port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'route="/v1/classify",service="classify",status="200"} 1.0' in text
    with pytest.raises(httpx.ConnectError):  # stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_api_token_guards_v1_and_v2_but_not_health_or_metrics(
    settings: ServingSettings, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated monthly\nsecond-token\n")
    guarded = settings.model_copy(
        update={"api_token": SecretStr("first-token"), "api_token_file": tokens}
    )
    png = {"content": png_bytes(DIGIT), "headers": {"content-type": "image/png"}}
    with TestClient(create_app(ClassifyService, guarded)) as client:
        wait_ready(client)
        for path in ("/livez", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200, path
        assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic x"}):
            for method, path in (("GET", "/v1/model"), ("POST", "/v1/classify"), ("GET", "/v2")):
                answer = client.request(method, path, headers=headers)
                assert answer.status_code == 401, (method, path, headers)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert "token" not in answer.json()["detail"].replace("bearer token", "")
        for token in ("first-token", "second-token"):
            auth = {"authorization": f"Bearer {token}"}
            assert client.get("/v1/model", headers=auth).status_code == 200
            answer = client.post("/v1/classify", **{**png, "headers": {**png["headers"], **auth}})
            assert answer.status_code == 200, answer.text
    open_again = settings.model_copy(update={"api_token": SecretStr("")})
    with TestClient(create_app(ClassifyService, open_again)) as client:
        wait_ready(client)
        assert client.get("/v1/model").status_code == 200  # an empty token turns auth off
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert (
        client.get("/livez", headers={"x-request-id": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    generated = client.get("/livez", headers={"x-request-id": "bad id!"}).headers["x-request-id"]
    assert generated != "bad id!" and len(generated) == 32


def test_docs_are_served_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "cdn" not in page.lower()
    assert "/docs/static/swagger-ui-bundle.js" in page
    script = client.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]


def test_batched_and_unbatched_responses_are_identical(settings: ServingSettings) -> None:
    """The same images give byte-identical answers whether they were batched or not."""
    import asyncio

    import httpx

    rng = np.random.default_rng(11)
    images = [png_bytes(rng.integers(0, 256, size=(8, 8))) for _ in range(24)]

    async def classify_all(app_settings: ServingSettings) -> tuple[list[dict], float]:
        app = create_app(ClassifyService, app_settings, load=False)
        runtime = app.state.runtime
        runtime.activate(runtime.load_once())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            responses = await asyncio.gather(
                *(
                    http.post(
                        "/v1/classify?top_k=10",
                        content=image,
                        headers={"content-type": "image/png"},
                    )
                    for image in images
                )
            )
            metrics = (await http.get("/metrics")).text
        await runtime.aclose()
        assert all(r.status_code == 200 for r in responses)
        batches = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("modelplane_batch_size_count")
        )
        return [r.json() for r in responses], batches

    unbatched, calls_off = asyncio.run(
        classify_all(settings.model_copy(update={"max_batch_size": 1}))
    )
    batched, calls_on = asyncio.run(
        classify_all(settings.model_copy(update={"max_batch_size": 16, "max_delay_ms": 50}))
    )
    assert calls_off == len(images) and calls_on < len(images)  # batching really happened
    for one, many in zip(unbatched, batched, strict=True):
        assert [p["label"] for p in one["predictions"]] == [p["label"] for p in many["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in one["predictions"]],
            [p["score"] for p in many["predictions"]],
            rtol=1e-5,
            atol=1e-7,
        )


def test_access_log_carries_request_id_route_status_latency_and_model_version(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="modelplane.access"):
        answer = client.post(
            "/v1/classify", content=png_bytes(DIGIT), headers={"content-type": "image/png"}
        )
    (record,) = [r for r in caplog.records if r.name == "modelplane.access"]
    assert record.request_id == answer.headers["x-request-id"]  # type: ignore[attr-defined]
    assert (record.route, record.status) == ("/v1/classify", 200)  # type: ignore[attr-defined]
    assert record.latency_ms > 0  # type: ignore[attr-defined]
    assert record.model_version == "1"  # type: ignore[attr-defined]


def test_a_services_own_defaults_apply_below_explicit_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.explain.service import ExplainService

    monkeypatch.setenv("MAX_QUEUE", "99")
    app = create_app(ExplainService, ServingSettings(request_timeout_s=5), load=False)
    settings = app.state.settings
    assert settings.max_image_pixels == 1024 * 1024  # the service's own default
    assert settings.max_queue == 99 and settings.request_timeout_s == 5  # env, then constructor
    assert app.state.runtime.uri == "models:/classify@production"
