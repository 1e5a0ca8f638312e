"""The regression gate's arithmetic: exact percentiles, ratios to the calibration, tolerances.
(The gate against a real service, slowed down for real, is tests/integration/test_loadtest.py.)"""

from __future__ import annotations

import pytest

from loadtests.check import compare, median_stats, parse_tolerance
from loadtests.run import EndpointStats, summarize

PNG = "classify POST /v1/classify [png]"
TOTAL = "classify total"
TOLERANCE = parse_tolerance("")


def stats(p50: float, p95: float, p99: float, rps: float, requests: int = 1000) -> dict:
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "rps": rps, "requests": requests}


def baseline(calibration_ms: float = 2.0, **endpoint: float) -> dict:
    return {
        "calibration_ms": calibration_ms,
        "endpoints": {PNG: stats(**endpoint), TOTAL: stats(**endpoint)},
    }


def test_summarize_gives_exact_percentiles_and_rps_over_the_run() -> None:
    samples = {
        "started": 100.0,
        "stopped": 110.0,
        "endpoints": {PNG: {"times_ms": [float(i) for i in range(1, 101)], "failures": 2}},
    }
    (found,) = summarize(samples).values()
    assert (found.requests, found.failures, found.rps) == (100, 2, 10.0)
    assert found.p50_ms == pytest.approx(50.5)
    assert found.p95_ms == pytest.approx(95.05)
    assert found.p99_ms == pytest.approx(99.01)
    assert found.fail_ratio == pytest.approx(2 / 102)


def test_median_of_repeats_resists_one_noisy_run_and_totals_each_service() -> None:
    json_form = "classify POST /v1/classify [json]"
    runs = [
        {
            PNG: EndpointStats(PNG, 100, 0, 50.0, 10.0, 20.0, 30.0),
            json_form: EndpointStats(json_form, 50, 0, 20.0, 10.0, 20.0, 30.0),
        },
        {PNG: EndpointStats(PNG, 100, 1, 10.0, 90.0, 200.0, 400.0)},  # a neighbour's burst
        {
            PNG: EndpointStats(PNG, 100, 0, 52.0, 11.0, 21.0, 31.0),
            json_form: EndpointStats(json_form, 50, 0, 22.0, 10.0, 20.0, 30.0),
        },
    ]
    merged = median_stats(runs)
    assert merged[PNG]["p95_ms"] == 21.0 and merged[PNG]["rps"] == 50.0
    assert (merged[PNG]["requests"], merged[PNG]["failures"]) == (300, 1)
    assert merged[TOTAL] == {"rps": 70.0, "requests": 400, "failures": 1}


def test_gate_names_the_endpoint_and_the_size_of_a_p95_regression() -> None:
    before = baseline(p50=10, p95=20, p99=30, rps=50)
    now = {PNG: stats(p50=10, p95=30, p99=30, rps=50), TOTAL: stats(10, 20, 30, rps=50)}
    lines, regressions = compare(before, now, 2.0, TOLERANCE)
    assert regressions == [f"{PNG}: p95 +50% against the baseline (limit +20%; 20.00 -> 30.00 ms)"]
    assert any(line.endswith("REGRESSED") and "| p95" in line for line in lines)


def test_gate_passes_within_tolerance_and_catches_a_throughput_drop() -> None:
    before = baseline(p50=10, p95=20, p99=30, rps=50)
    now = stats(p50=11, p95=23, p99=36, rps=44)
    _, within = compare(before, {PNG: now, TOTAL: now}, 2.0, TOLERANCE)
    assert within == []
    now = stats(p50=10, p95=20, p99=30, rps=40)
    _, slower = compare(before, {PNG: now, TOTAL: now}, 2.0, TOLERANCE)
    assert slower == [
        f"{TOTAL}: throughput -20% against the baseline (limit -15%; 50.00 -> 40.00 req/s)"
    ]


def test_a_slower_machine_is_not_a_regression_when_the_calibration_slows_too() -> None:
    before = baseline(calibration_ms=2.0, p50=10, p95=20, p99=30, rps=50)
    slow = stats(p50=20, p95=40, p99=60, rps=25)
    twice_as_slow = {PNG: slow, TOTAL: slow}
    assert compare(before, twice_as_slow, 4.0, TOLERANCE)[1] == []
    assert len(compare(before, twice_as_slow, 2.0, TOLERANCE)[1]) == 4


def test_an_endpoint_without_answers_is_a_regression() -> None:
    before = baseline(p50=10, p95=20, p99=30, rps=50)
    _, regressions = compare(before, {}, 2.0, TOLERANCE)
    assert regressions == [
        f"{PNG}: no successful requests (baseline 1000)",
        f"{TOTAL}: no successful requests (baseline 1000)",
    ]


def test_tail_percentiles_need_enough_baseline_requests_to_be_gated() -> None:
    few = {"calibration_ms": 2.0, "endpoints": {PNG: stats(10, 20, 30, 50, requests=60)}}
    much_worse_tails = {PNG: stats(p50=10, p95=60, p99=90, rps=50)}
    lines, regressions = compare(few, much_worse_tails, 2.0, TOLERANCE)
    assert regressions == []  # 60 requests: 3 above p95, none above p99: p50 only
    assert [line.split("|")[2].strip() for line in lines if line.startswith(f"| {PNG}")] == ["p50"]
    _, enough = compare(
        {**few, "endpoints": {PNG: stats(10, 20, 30, 50, requests=100)}},
        much_worse_tails,
        2.0,
        TOLERANCE,
    )
    assert enough == [f"{PNG}: p95 +200% against the baseline (limit +20%; 20.00 -> 60.00 ms)"]


def test_tolerances_are_configurable_per_metric_and_checked() -> None:
    assert parse_tolerance("p95=0.5,rps=0.3") == {
        "p50_ms": 0.25,
        "p95_ms": 0.5,
        "p99_ms": 0.30,
        "rps": 0.3,
    }
    with pytest.raises(SystemExit, match="unknown metric"):
        parse_tolerance("p90=0.1")
