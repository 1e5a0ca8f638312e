"""The similarity service in process: embed, compare, search, gallery, errors, reloads."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from services.similarity.schemas import GalleryAddBody, SearchBody
from services.similarity.service import SimilarityService
from shared.bundle import open_bundle
from shared.media import encode_png, gray_to_image
from tests.tinysimilarity import (
    SPEC,
    THRESHOLD,
    gallery_digits,
    reference_embeddings,
    seed_cache,
    serving,
    settings_for,
)
from training.data import load_splits, preprocess


def b64(pixels: np.ndarray) -> str:
    return base64.b64encode(encode_png(gray_to_image(pixels))).decode()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    seed_cache(tmp_path / "cache")
    return tmp_path / "cache"


def test_embed_returns_unit_vectors_matching_the_reference(cache: Path) -> None:
    test = load_splits()["test"]
    with serving(cache) as client:
        response = client.post(
            "/v1/similarity/embed", json={"images": [b64(i) for i in test.images[:5]]}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    got = np.asarray(body["embeddings"], dtype=np.float32)
    expected = reference_embeddings(preprocess(test.images[:5], SPEC))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert body["model"] == {"name": "similarity", "version": "1", "variant": "fp32"}


def test_compare_uses_the_bundle_threshold(cache: Path) -> None:
    test = load_splits()["test"]
    with serving(cache) as client:
        same = client.post(
            "/v1/similarity/compare",
            json={"image_a": b64(test.images[0]), "image_b": b64(test.images[0])},
        ).json()
        other = client.post(
            "/v1/similarity/compare",
            json={"image_a": b64(test.images[0]), "image_b": b64(255 - test.images[0])},
        ).json()
    assert same["similarity"] == pytest.approx(1.0, abs=1e-5) and same["same"] is True
    assert same["threshold"] == pytest.approx(THRESHOLD)
    assert other["same"] is (other["similarity"] >= THRESHOLD)
    assert other["similarity"] < same["similarity"]


def test_search_finds_a_gallery_image_first_and_ranks_best_first(cache: Path) -> None:
    images, ids, labels = gallery_digits(40)
    with serving(cache) as client:
        for i in (0, 7, 23):
            response = client.post("/v1/similarity/search", json={"image": b64(images[i]), "k": 5})
            assert response.status_code == 200, response.text
            matches = response.json()["matches"]
            assert (matches[0]["id"], matches[0]["label"]) == (ids[i], labels[i])
            assert matches[0]["score"] == pytest.approx(1.0, abs=1e-5)
            scores = [m["score"] for m in matches]
            assert scores == sorted(scores, reverse=True) and len(matches) == 5
        everything = client.post("/v1/similarity/search", json={"image": b64(images[0]), "k": 100})
        assert len(everything.json()["matches"]) == 40  # k beyond the gallery: all of it


def test_gallery_additions_are_searchable_and_counted(cache: Path) -> None:
    test = load_splits()["test"]
    with serving(cache) as client:
        assert client.get("/v1/similarity/gallery").json()["size"] == 40
        added = client.post(
            "/v1/similarity/gallery",
            json={"images": [b64(test.images[3]), b64(test.images[4])], "labels": ["a", "b"]},
        )
        assert added.status_code == 200, added.text
        new_ids = added.json()["ids"]
        assert added.json()["size"] == 42 and len(set(new_ids)) == 2
        info = client.get("/v1/similarity/gallery").json()
        assert (info["size"], info["base_size"], info["added"]) == (42, 40, 2)
        hit = client.post("/v1/similarity/search", json={"image": b64(test.images[4]), "k": 1})
        assert hit.json()["matches"][0] | {"score": 1} == {
            "id": new_ids[1],
            "label": "b",
            "score": 1,
        }
        again = client.post(
            "/v1/similarity/gallery",
            json={"images": [b64(test.images[5])], "labels": ["c"], "ids": [new_ids[0]]},
        )
        assert again.status_code == 409 and again.json()["code"] == "duplicate_id"
        assert client.get("/v1/similarity/gallery").json()["size"] == 42


def test_empty_gallery_search_is_409_until_items_are_added(tmp_path: Path) -> None:
    seed_cache(tmp_path / "cache", gallery_size=0)
    digit = load_splits()["test"].images[0]
    with serving(tmp_path / "cache") as client:
        empty = client.post("/v1/similarity/search", json={"image": b64(digit)})
        assert empty.status_code == 409, empty.text
        assert empty.headers["content-type"] == "application/problem+json"
        assert "gallery is empty" in empty.json()["detail"]
        client.post(
            "/v1/similarity/gallery",
            json={"images": [b64(digit)], "labels": ["7"], "ids": ["mine"]},
        )
        found = client.post("/v1/similarity/search", json={"image": b64(digit)})
        assert found.status_code == 200 and found.json()["matches"][0]["id"] == "mine"


def fill(body: dict, image: str) -> dict:
    """`body` with every "IMAGE" placeholder (alone or in a list) replaced by `image`."""

    def one(value: object) -> object:
        return image if value == "IMAGE" else value

    return {k: [one(x) for x in v] if isinstance(v, list) else one(v) for k, v in body.items()}


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [
        ("/v1/similarity/search", {"image": "IMAGE", "k": 0}, 422),
        ("/v1/similarity/search", {"image": "IMAGE", "k": 101}, 422),
        ("/v1/similarity/search", {"image": "%%%"}, 400),
        ("/v1/similarity/search", {"image": base64.b64encode(b"not a png").decode()}, 400),
        ("/v1/similarity/search", {}, 422),
        ("/v1/similarity/compare", {"image_a": "IMAGE"}, 422),
        ("/v1/similarity/embed", {"images": []}, 422),
        ("/v1/similarity/embed", {"images": ["IMAGE"] * 65}, 422),
        ("/v1/similarity/gallery", {"images": ["IMAGE"], "labels": []}, 422),
        (
            "/v1/similarity/gallery",
            {"images": ["IMAGE"] * 2, "labels": ["a", "b"], "ids": ["x", "x"]},
            422,
        ),
    ],
)
def test_bad_requests_get_a_clear_4xx(cache: Path, route: str, body: dict, status: int) -> None:
    body = fill(body, b64(load_splits()["test"].images[0]))
    with serving(cache) as client:
        response = client.post(route, json=body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"


def test_non_json_bodies_and_oversized_images_are_refused(cache: Path) -> None:
    big = b64(np.zeros((300, 300), dtype=np.uint8))  # 90,000 pixels > the 65,536 limit
    png = encode_png(gray_to_image(np.zeros((8, 8), dtype=np.uint8)))
    with serving(cache) as client:
        raw = client.post(
            "/v1/similarity/search", content=png, headers={"content-type": "image/png"}
        )
        assert raw.status_code == 415
        assert client.post("/v1/similarity/embed", json={"images": [big]}).status_code == 413
        assert client.get("/readyz").status_code == 200


def test_additions_survive_a_reload_only_with_the_same_embedding_model(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first_dir = seed_cache(tmp_path / "a")
    same_dir = seed_cache(tmp_path / "b")  # identical content: a reload of the same model
    other_dir = seed_cache(tmp_path / "c", source_version="2", seed=1)
    service = SimilarityService()  # one per app: every model load shares its gallery store
    png = base64.b64encode(encode_png(gray_to_image(load_splits()["test"].images[9]))).decode()
    spec = service.spec()

    first = service.make_model(spec)
    first.load(open_bundle(first_dir), "fp32", settings)
    add = GalleryAddBody(images=[png], labels=["9"], ids=["kept"])
    first.added(first.predict(first.embed_images(add)), add)
    assert first.describe()["gallery"]["added"] == 1

    reloaded = service.make_model(spec)
    reloaded.load(open_bundle(same_dir), "fp32", settings)
    assert reloaded.describe()["gallery"]["added"] == 1
    query = SearchBody(image=png, k=1)
    found = reloaded.matches(reloaded.predict(reloaded.search_image(query)), query)
    assert found["matches"][0]["id"] == "kept"

    swapped = service.make_model(spec)
    swapped.load(open_bundle(other_dir), "fp32", settings)
    assert (swapped.describe()["gallery"]["added"], swapped.describe()["gallery"]["size"]) == (
        0,
        40,
    )


def test_v2_infer_returns_the_embeddings(cache: Path) -> None:
    x = preprocess(load_splits()["test"].images[:3], SPEC)
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    with serving(cache) as client:
        response = client.post("/v2/models/similarity/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "embedding" and output["shape"] == [3, 16]
    got = np.asarray(output["data"], dtype=np.float32).reshape(3, 16)
    np.testing.assert_allclose(got, reference_embeddings(x), atol=1e-5)


def test_openapi_documents_every_similarity_route(cache: Path) -> None:
    with serving(cache) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for route in ("embed", "compare", "search"):
        body = paths[f"/v1/similarity/{route}"]["post"]["requestBody"]
        assert "application/json" in body["content"]
    assert {"get", "post"} <= set(paths["/v1/similarity/gallery"])


def test_gallery_additions_need_the_token_when_auth_is_on(cache: Path) -> None:
    digit = b64(load_splits()["test"].images[0])
    body = {"images": [digit], "labels": ["0"], "ids": ["guarded"]}
    with serving(cache, api_token="s3cret") as client:
        refused = client.post("/v1/similarity/gallery", json=body)
        assert refused.status_code == 401
        assert client.get("/v1/similarity/gallery").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/similarity/gallery", headers=auth).json()["size"] == 40
        added = client.post("/v1/similarity/gallery", json=body, headers=auth)
        assert added.status_code == 200 and added.json()["size"] == 41


def test_a_wrong_method_lists_every_method_of_the_path(cache: Path) -> None:
    """GET and POST /v1/similarity/gallery are two routes; 405's Allow names both (schemathesis
    found Starlette naming only the first)."""
    with serving(cache) as client:
        answer = client.request("DELETE", "/v1/similarity/gallery")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET, POST"
        assert answer.headers["content-type"] == "application/problem+json"
