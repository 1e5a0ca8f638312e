"""Drift of the similarity service's embeddings: the tiny encoder's bundle gets a reference of
validation digits; embedding the test digits keeps it quiet, inverted digits raise it (the
per-dimension KS test and the MMD test on the embedding as a whole, each on its own)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from shared.media import encode_png, gray_to_image
from tests.procs import poll_until
from tests.tinysimilarity import SPEC, seed_cache, serving
from training.data import load_splits, preprocess
from training.export.reference import add_reference

WINDOW = 100


def embed_all(client: TestClient, images: np.ndarray, seen_before: int) -> dict:
    """POST the images five per request; the drift report once the observer saw them all."""
    for start in range(0, len(images), 5):
        encoded = [
            base64.b64encode(encode_png(gray_to_image(image))).decode()
            for image in images[start : start + 5]
        ]
        answer = client.post("/v1/similarity/embed", json={"images": encoded})
        assert answer.status_code == 200, answer.text
    expected = seen_before + len(images)

    def seen() -> dict | None:
        report = client.get("/v1/model/drift").json()
        return report if report["models"]["similarity"]["items_seen"] == expected else None

    return poll_until(seen, 10, f"{expected} embeddings observed")


def test_embedding_drift_stays_quiet_on_test_digits_and_flags_inverted_ones(
    tmp_path: Path,
) -> None:
    bundle_dir = seed_cache(tmp_path / "cache")
    splits = load_splits()
    add_reference(bundle_dir, "embedding/1", preprocess(splits["val"].images, SPEC), "val")
    test = splits["test"].images
    with serving(tmp_path / "cache", drift_window=WINDOW, drift_check_every=10) as client:
        quiet = embed_all(client, test[:WINDOW], 0)["models"]["similarity"]
        assert quiet["features"] == "embedding/1" and not quiet["drifted"], quiet
        assert set(quiet["tests"]) == {"features", "mmd"}  # no classes: an encoder has none
        assert not quiet["tests"]["mmd"]["drifted"], quiet["tests"]["mmd"]
        drifted = embed_all(client, 255 - test[WINDOW : WINDOW + 60], WINDOW)
    entry = drifted["models"]["similarity"]
    assert drifted["drifted"] and entry["tests"]["features"]["p_value"] < 0.001, entry
    assert entry["tests"]["mmd"]["drifted"] and entry["tests"]["mmd"]["p_value"] < 0.001, entry


def test_mmd_on_embeddings_rarely_alarms_on_test_digits_and_flags_corrupted_ones(
    tmp_path: Path,
) -> None:
    """Repeated windows of the tiny encoder's test-digit embeddings against its validation
    reference: the false-alarm rate of the MMD test alone; then inverted, rotated and noisy
    digits, a full window each."""
    from shared.bundle import open_bundle
    from shared.drift import DriftMonitor, DriftReference, embedding_features
    from tests.tinysimilarity import reference_embeddings

    bundle_dir = seed_cache(tmp_path / "cache")
    splits = load_splits()
    add_reference(bundle_dir, "embedding/1", preprocess(splits["val"].images, SPEC), "val")
    reference = DriftReference.from_bundle(open_bundle(bundle_dir), "fp32")
    assert reference is not None

    def rows(images: np.ndarray) -> np.ndarray:
        inputs = preprocess(images, SPEC)
        return embedding_features(inputs, reference_embeddings(inputs))

    def mmd(window: np.ndarray) -> bool:
        monitor = DriftMonitor(reference, WINDOW, 10, 0.001)
        monitor.add(window)
        return monitor.check()["mmd"].drifted

    test = splits["test"].images
    clean = rows(test)
    rng = np.random.default_rng(0)
    alarms = sum(mmd(clean[rng.choice(len(clean), WINDOW, replace=False)]) for _ in range(100))
    print(f"mmd on embeddings: {alarms} false alarms in 100 windows of {WINDOW} test digits")
    assert alarms <= 2
    noise = np.random.default_rng(7).normal(0, 64, size=test.shape)
    corrupted = {
        "inverted": 255 - test,
        "rotated": np.rot90(test, 1, axes=(1, 2)).copy(),
        "noisy": np.clip(test + noise, 0, 255).astype(np.uint8),
    }
    for name, images in corrupted.items():
        assert mmd(rows(images)[:WINDOW]), f"{name} digits did not raise the MMD alarm"
