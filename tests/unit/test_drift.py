"""Drift detection on real digits: the reference the bundle carries, clean held-out traffic that
must not alarm (false-alarm rate over repeated windows), and rotated / inverted / noisy digits
that must, within a stated number of items; plus the service's GET /v1/model/drift and gauges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.classify.service import ClassifyService
from shared.app import create_app
from shared.bundle import Bundle, open_bundle, read_manifest, write_manifest
from shared.drift import DriftMonitor, DriftReference, features_of
from shared.errors import BundleError
from shared.media import ImageSpec
from shared.onnx import OnnxModel
from shared.settings import ServingSettings
from tests.procs import poll_until
from tests.tinydrift import CLEAN, CORRUPTIONS, digit_pixels, model_inputs, pngs, seed_drift_cache
from tests.unit.conftest import DEAD_REGISTRY, wait_ready

WINDOW = 100
TESTS = ("features", "classes", "mmd")
P_VALUE = 0.001
REPEATS = 200
#: stated detection delay: corrupted items after which every repetition has alarmed
WITHIN = {"rotated": 60, "inverted": 60, "noisy": 100}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return open_bundle(seed_drift_cache(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def reference(bundle: Bundle) -> DriftReference:
    found = DriftReference.from_bundle(bundle, "fp32")
    assert found is not None
    return found


def served_features(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    """The feature rows the service computes for these images (same model, same code)."""
    model = OnnxModel.from_bundle(bundle, "fp32", 1)
    inputs = model_inputs(images)
    return features_of("classifier/1", list(inputs), list(model.run({"input": inputs})[0]))


def full_window(reference: DriftReference, rows: np.ndarray) -> DriftMonitor:
    monitor = DriftMonitor(reference, WINDOW, 10, P_VALUE)
    monitor.add(rows)
    return monitor


def test_reference_holds_one_row_per_held_out_digit_per_variant(bundle: Bundle) -> None:
    entry = bundle.manifest["drift"]
    assert entry["features"] == "classifier/1"
    assert set(entry["files"]) == set(bundle.variants)
    rows = bundle.load_array(entry["files"]["fp32"])
    assert rows.shape == (entry["items"], 13)  # mean, std, score, 10 logits
    assert rows.dtype == np.float32


def test_clean_held_out_digits_rarely_raise_a_false_alarm(
    bundle: Bundle, reference: DriftReference
) -> None:
    clean = served_features(bundle, digit_pixels(CLEAN))
    rng = np.random.default_rng(0)
    alarms = {"features": 0, "classes": 0, "mmd": 0}
    for _ in range(REPEATS):
        window = clean[rng.choice(len(clean), WINDOW, replace=False)]
        for test, result in full_window(reference, window).check().items():
            alarms[test] += result.drifted
    rates = {test: count / REPEATS for test, count in alarms.items()}
    print(f"false-alarm rate over {REPEATS} windows of {WINDOW} clean digits: {rates}")
    assert max(rates.values()) <= 0.02


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_digits_raise_the_alarm_within_the_stated_items(
    bundle: Bundle, reference: DriftReference, corruption: str
) -> None:
    clean = served_features(bundle, digit_pixels(CLEAN))
    corrupted = served_features(bundle, CORRUPTIONS[corruption](digit_pixels(CLEAN)))
    rng = np.random.default_rng(1)
    delays = []
    for _ in range(20):  # a window of clean traffic, then corrupted digits arrive 10 at a time
        monitor = full_window(reference, clean[rng.choice(len(clean), WINDOW, replace=False)])
        assert not any(r.drifted for r in monitor.check().values())
        order = rng.permutation(len(corrupted))
        for sent in range(10, len(corrupted) + 1, 10):
            monitor.add(corrupted[order[sent - 10 : sent]])
            if any(result.drifted for result in monitor.check().values()):
                delays.append(sent)
                break
        else:
            delays.append(len(corrupted) + 1)
    print(f"{corruption}: items until alarm, median {np.median(delays):.0f}, max {max(delays)}")
    assert max(delays) <= WITHIN[corruption]


#: stated detection delay of the MMD test alone (the whole feature row as one vector)
MMD_WITHIN = {"rotated": 40, "inverted": 30, "noisy": 100}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_mmd_alone_flags_each_corruption_within_the_stated_items(
    bundle: Bundle, reference: DriftReference, corruption: str
) -> None:
    clean = served_features(bundle, digit_pixels(CLEAN))
    corrupted = served_features(bundle, CORRUPTIONS[corruption](digit_pixels(CLEAN)))
    rng = np.random.default_rng(2)
    delays = []
    for _ in range(10):
        monitor = full_window(reference, clean[rng.choice(len(clean), WINDOW, replace=False)])
        assert not monitor.check()["mmd"].drifted
        order = rng.permutation(len(corrupted))
        for sent in range(10, len(corrupted) + 1, 10):
            monitor.add(corrupted[order[sent - 10 : sent]])
            if monitor.check()["mmd"].drifted:
                delays.append(sent)
                break
        else:
            delays.append(len(corrupted) + 1)
    print(
        f"mmd, {corruption}: items until alarm, median {np.median(delays):.0f}, max {max(delays)}"
    )
    assert max(delays) <= MMD_WITHIN[corruption]


def test_mmd_report_names_the_vector_it_compares(bundle: Bundle, reference: DriftReference) -> None:
    inverted = served_features(bundle, CORRUPTIONS["inverted"](digit_pixels(CLEAN)))
    found = full_window(reference, inverted[:WINDOW]).check()["mmd"]
    assert found.drifted and found.statistic > 0 and found.p_value < P_VALUE
    assert found.detail["columns"] == 13  # the whole row: input statistics, score, logits
    assert found.detail["permutations"] >= 1 / P_VALUE  # enough to resolve the threshold


def test_one_class_only_is_a_predicted_class_shift(
    bundle: Bundle, reference: DriftReference
) -> None:
    from sklearn.datasets import load_digits

    labels = load_digits().target[CLEAN]
    rows = served_features(bundle, digit_pixels(CLEAN[labels == 3]))
    result = full_window(reference, rows).check()["classes"]
    assert result.drifted and result.statistic > 0.5  # total variation: mostly one class


def test_a_reference_of_the_wrong_shape_refuses_the_load(tmp_path: Path) -> None:
    bundle_dir = seed_drift_cache(tmp_path / "cache")
    np.save(bundle_dir / "drift.fp32.npy", np.zeros((3, 13), np.float32))
    manifest = read_manifest(bundle_dir)
    manifest.pop("files")
    write_manifest(bundle_dir, manifest)
    with pytest.raises(BundleError, match="drift reference"):
        DriftReference.from_bundle(open_bundle(bundle_dir), "fp32")


@contextmanager
def serving_drift(cache: Path, **settings: Any) -> Iterator[TestClient]:
    seed_drift_cache(cache)
    served = ServingSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=cache,
        onnx_intra_op_threads=1,
        drift_window=WINDOW,
        drift_p_value=P_VALUE,
        log_json=False,
        **settings,
    )
    with TestClient(create_app(ClassifyService, served)) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def drift_client(tmp_path: Path) -> Iterator[TestClient]:
    with serving_drift(tmp_path / "cache") as client:
        yield client


def gauges(client: TestClient) -> dict[tuple[str, str], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, sample.labels.get("test", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("modelplane_drift_")
    }


def test_drift_endpoint_and_gauges_follow_the_served_traffic(drift_client: TestClient) -> None:
    quiet = drift_client.get("/v1/model/drift").json()["models"]["classify"]
    assert quiet["available"] and quiet["window"] == {"size": WINDOW, "items": 0}
    assert gauges(drift_client)[("modelplane_drift_detected", "features")] == 0
    for body in pngs(CORRUPTIONS["inverted"](digit_pixels(CLEAN[:WINDOW]))):
        answer = drift_client.post(
            "/v1/classify", content=body, headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200

    def seen_all() -> dict | None:
        report = drift_client.get("/v1/model/drift").json()
        return report if report["models"]["classify"]["items_seen"] == WINDOW else None

    report = poll_until(seen_all, 10, "the observer saw every request")
    assert report["drifted"] is True
    entry = report["models"]["classify"]
    assert entry["tests"]["features"]["drifted"] and entry["tests"]["features"]["p_value"] < P_VALUE
    assert entry["reference"]["items"] == 297
    found = gauges(drift_client)
    assert found[("modelplane_drift_detected", "features")] == 1
    assert found[("modelplane_drift_window_items", "")] == WINDOW
    assert found[("modelplane_drift_p_value", "features")] < P_VALUE


def test_the_drift_endpoints_own_check_updates_the_gauges(tmp_path: Path) -> None:
    # the observer tests every 1,000 items, so only GET /v1/model/drift tests this window; the
    # gauges must show that newest test, not the observer's older one (the alert reads them)
    with serving_drift(tmp_path / "cache", drift_check_every=1000) as client:
        for body in pngs(CORRUPTIONS["inverted"](digit_pixels(CLEAN[:WINDOW]))):
            answer = client.post(
                "/v1/classify", content=body, headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200

        def windowed() -> bool:
            return gauges(client).get(("modelplane_drift_window_items", "")) == WINDOW

        poll_until(windowed, 10, "the observer saw every request")
        assert gauges(client)[("modelplane_drift_detected", "features")] == 0  # not tested yet
        report = client.get("/v1/model/drift").json()["models"]["classify"]
        assert report["tests"]["features"]["drifted"] is True
        found = gauges(client)
        assert found[("modelplane_drift_detected", "features")] == 1
        assert (
            found[("modelplane_drift_p_value", "features")]
            == report["tests"]["features"]["p_value"]
        )


def test_served_items_are_tested_as_their_rows_would_be(
    bundle: Bundle, reference: DriftReference
) -> None:
    # features are computed lazily, for the items still in the window when a test runs
    model = OnnxModel.from_bundle(bundle, "fp32", 1)
    images = np.concatenate([digit_pixels(CLEAN), CORRUPTIONS["inverted"](digit_pixels(CLEAN))])
    inputs = model_inputs(images[: 3 * WINDOW])
    logits = model.run({"input": inputs})[0]
    lazy = DriftMonitor(reference, WINDOW, 10, P_VALUE)
    for start in range(0, len(inputs), 7):  # as the observer hands them over, a few at a time
        lazy.add_served(list(inputs[start : start + 7]), list(logits[start : start + 7]))
    assert lazy.size == WINDOW and lazy.seen == len(inputs)
    eager = DriftMonitor(reference, WINDOW, 10, P_VALUE)
    eager.add(features_of("classifier/1", list(inputs[-WINDOW:]), list(logits[-WINDOW:])))
    assert lazy.check() == eager.check()
    assert lazy.report()["window"] == {"size": WINDOW, "items": WINDOW}


def test_a_test_waits_for_the_interval_then_runs_once(reference: DriftReference) -> None:
    monitor = DriftMonitor(reference, WINDOW, 10, P_VALUE, check_interval_s=0.3)
    rows = reference.rows[:40]
    monitor.add(rows[:30])
    assert monitor.due()  # 30 new items, no test yet: due at once
    assert not monitor.due()  # handed out once
    monitor.add(rows[30:40])
    assert monitor.pending and not monitor.due()  # 10 more, but within the interval: held
    poll_until(monitor.due, 5, "the held test came due")
    assert not monitor.pending and not monitor.due()


def test_a_held_test_runs_without_more_traffic(tmp_path: Path) -> None:
    # the first test runs once 30 clean items are in; the next is held for the interval, and
    # the 70 that follow (40 of them inverted) arrive well within it: that test then runs
    # with no request arriving (nor GET /v1/model/drift) to trigger it
    with serving_drift(
        tmp_path / "cache", drift_check_every=10, drift_check_interval_s=3.0
    ) as client:
        clean = pngs(digit_pixels(CLEAN[:60]))
        inverted = pngs(CORRUPTIONS["inverted"](digit_pixels(CLEAN[60:100])))
        for body in [*clean, *inverted]:
            answer = client.post(
                "/v1/classify", content=body, headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200

        def flagged() -> bool:
            found = gauges(client)
            return any(found[("modelplane_drift_detected", test)] == 1 for test in TESTS)

        poll_until(flagged, 15, "the held test flagged the inverted digits")
        assert gauges(client)[("modelplane_drift_window_items", "")] == 100


def test_the_export_stores_each_variants_view_of_the_validation_digits(tmp_path: Path) -> None:
    from tests.tinymodels import write_tiny_bundle
    from training.data import load_splits, preprocess
    from training.export.reference import bundle_reference

    source = open_bundle(write_tiny_bundle(tmp_path / "bundle", fitted=True))
    entry = bundle_reference(source.path, source, {"fp32": "model.onnx"})
    assert entry is not None and entry["features"] == "classifier/1"
    rows = np.load(source.path / entry["files"]["fp32"], allow_pickle=False)
    val = preprocess(load_splits()["val"].images, ImageSpec.from_manifest(source.preprocessing))
    assert rows.shape == (len(val), 13) == (entry["items"], 13)
    np.testing.assert_allclose(rows[:, 0], val.reshape(len(val), -1).mean(1), atol=1e-5)
    logits = OnnxModel.from_bundle(source, "fp32", 1).run({"input": val})[0]
    np.testing.assert_allclose(rows[:, 3:], logits, atol=1e-5)
