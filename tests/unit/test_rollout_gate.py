"""The rollout's pieces alone: sticky buckets, bad settings, histogram quantiles, evidence read
from a real metrics registry, and the gate's decisions against each threshold."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import generate_latest
from pydantic import ValidationError
from scipy.stats import binom

from modelplane.rollout import (
    PROMOTED,
    ROLLED_BACK,
    Evidence,
    Side,
    Thresholds,
    decide,
    evidence,
    quantile,
)
from shared.canary import bucket
from shared.metrics import LATENCY_BUCKETS, Metrics
from shared.settings import ServingSettings


def test_buckets_are_sticky_and_split_like_the_percent() -> None:
    keys = [f"user-{n}" for n in range(10_000)]
    assert [bucket(k) for k in keys[:50]] == [bucket(k) for k in keys[:50]]
    below = sum(bucket(k) < 20 for k in keys)
    low, high = binom.interval(0.999, len(keys), 0.2)
    assert low <= below <= high
    assert all(0 <= bucket(k) < 100 for k in keys)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"canary_percent": 120}, "less than or equal to 100"),
        ({"shadow_percent": -1}, "greater than or equal to 0"),
        ({"challenger_alias": "bad alias!"}, "should match pattern"),
        ({"challenger_alias": "production"}, "is the production alias"),
        ({"model_uri": "models:/m@live", "challenger_alias": "live"}, "is the production alias"),
        ({"challenger_alias": "", "canary_percent": 5}, "need CHALLENGER_ALIAS"),
    ],
)
def test_bad_rollout_settings_are_refused(settings: dict, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ServingSettings(**settings)


def test_a_service_with_bad_settings_exits_with_one_clear_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.classify", "--port", "0"],
        env={"CANARY_PERCENT": "150", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m services.classify: invalid settings: CANARY_PERCENT: Input should be less "
        "than or equal to 100"
    ]


def test_quantile_interpolates_like_histogram_quantile() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.0, 1.0, 20_000)
    edges = [0.1 * k for k in range(1, 11)] + [math.inf]
    cumulative = {e: float((values <= e).sum()) for e in edges}
    assert quantile(0.95, cumulative) == pytest.approx(np.quantile(values, 0.95), abs=0.01)
    assert math.isnan(quantile(0.95, {}))
    assert quantile(0.5, {1.0: 0.0, 2.0: 10.0, math.inf: 10.0}) == pytest.approx(1.5)
    assert quantile(0.99, {1.0: 0.0, math.inf: 5.0}) == 1.0  # all in +Inf: the last edge


def test_evidence_is_read_from_the_metrics_a_service_exports() -> None:
    metrics = Metrics("classify")
    for _ in range(30):
        metrics.model_requests.labels("classify", "classify", "1", "production", "ok").inc()
        metrics.model_latency.labels("classify", "classify", "1", "production").observe(0.004)
    for _ in range(10):
        metrics.model_requests.labels("classify", "classify", "2", "challenger", "ok").inc()
        metrics.model_latency.labels("classify", "classify", "2", "challenger").observe(0.02)
    metrics.model_requests.labels("classify", "classify", "2", "challenger", "error").inc()
    for value in (1.0, 0.0, 1.0, 1.0):
        metrics.shadow_agreement.labels("classify", "classify", "2").observe(value)
    text = generate_latest(metrics.registry).decode()

    from prometheus_client.parser import text_string_to_metric_families

    samples = [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    found = evidence(samples + samples, "classify", "classify", "1", "2")  # two replicas
    assert (found.production.ok, found.production.errors) == (60, 0)
    assert (found.canary.ok, found.canary.errors) == (20, 2)
    assert found.agreement == pytest.approx(0.75) and found.agreement_count == 8
    assert 0.0025 < found.production.p95() <= 0.005
    assert 0.015 < found.canary.p95() <= 0.025
    assert set(found.production.buckets) == {*LATENCY_BUCKETS, math.inf}


def side(ok: float, errors: float, latency_s: float) -> Side:
    return Side(ok, errors, {latency_s: 0.0, latency_s * 1.01: ok + errors, math.inf: ok + errors})


LIMITS = Thresholds(min_canary=100, min_shadow=100)


@pytest.mark.parametrize(
    ("canary", "agreement", "decision", "reason"),
    [
        (side(300, 0, 0.010), 0.97, PROMOTED, None),
        (side(300, 0, 0.020), 0.97, ROLLED_BACK, "p95 latency"),
        (side(290, 10, 0.010), 0.97, ROLLED_BACK, "error rate"),
        (side(300, 0, 0.010), 0.50, ROLLED_BACK, "agreement"),
        (side(50, 0, 0.010), 0.97, ROLLED_BACK, "not enough evidence"),
    ],
)
def test_the_gate_decides_by_each_threshold(
    canary: Side, agreement: float, decision: str, reason: str | None
) -> None:
    found = Evidence(side(1000, 1, 0.010), canary, side(300, 0, 0.012), agreement * 300, 300)
    made, reasons, figures = decide(found, LIMITS)
    assert made == decision
    if reason is None:
        assert reasons == []
        assert figures["p95_ratio"] == pytest.approx(1.0, abs=0.02)
    else:
        assert len(reasons) == 1 and reason in reasons[0]


def test_each_service_declares_what_agreement_means() -> None:
    import base64

    from services.classify.service import ClassifyModel
    from services.generate.service import GenerateModel
    from services.similarity.service import SimilarityModel
    from services.text.generation import TextGenerator
    from shared.media import encode_png

    def bare(cls: type) -> object:  # the methods compare outputs; no model needs loading
        return object.__new__(cls)

    classify = bare(ClassifyModel)
    assert classify.agreement(np.array([0.1, 2.0, 0.3]), np.array([0.0, 5.0, 1.0])) == 1.0
    assert classify.agreement(np.array([0.1, 2.0, 0.3]), np.array([3.0, 0.0, 1.0])) == 0.0

    similarity = bare(SimilarityModel)
    rows = np.eye(3, dtype=np.float32)[:2]
    assert similarity.agreement(rows, rows * 2) == pytest.approx(1.0)
    assert similarity.agreement(rows, rows[::-1]) == pytest.approx(0.0)
    assert similarity.agreement(rows, rows[:1]) == 0.0

    text = bare(TextGenerator)
    same = {"text": "Return the area of a rectangle from its width and height today"}
    later = {"text": "Return the area of a rectangle from its sides instead"}
    other = {"text": "Return the area of a rectangle from their sides"}
    assert text.agreement(same, dict(same)) == 1.0
    assert text.agreement(same, later) == 1.0  # the first 8 words agree
    assert text.agreement(same, other) == 0.0  # the 8th word differs

    def answer(pixels: np.ndarray) -> dict[str, object]:
        data = base64.b64encode(encode_png(Image.fromarray(pixels))).decode()
        return {"images": [{"image": data, "seed": 1, "flagged": False}]}

    generate = bare(GenerateModel)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert generate.agreement(answer(image), answer(image)) == 1.0
    inverted = generate.agreement(answer(image), answer(255 - image))
    assert inverted < 0.6
    assert generate.agreement(answer(image), {"images": []}) == 0.0


def test_replicas_sharing_a_cache_write_its_aliases_without_racing(tmp_path: Path) -> None:
    """Two replicas on one cache volume once renamed each other's temporary alias file
    (FileNotFoundError, and the alias watch died): every writer now has its own."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.cache import ModelCache

    def churn(worker: int) -> None:
        cache = ModelCache(tmp_path)
        for n in range(200):
            cache.remember_alias("m", "challenger", str(n))
            cache.forget_alias("m", "challenger")
            cache.remember_alias("m", f"w{worker}", str(n))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(churn, range(4)))  # raises if any writer failed
    aliases = json.loads((tmp_path / "m" / "aliases.json").read_text())
    assert "challenger" not in aliases or aliases["challenger"].isdigit()
    assert not list((tmp_path / "m").glob("*.tmp"))
