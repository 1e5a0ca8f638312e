"""`make loadtest` and the latency regression gate, headless against a real classify process:
a smoke run without failures; a gate that passes on its own baseline and on a retrained model,
fails on a genuinely slower build (same name and variant) and on failing requests, and refuses
(instead of judging) another variant or another load; the similarity and text users live
against real processes of those services."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from loadtests.users.payloads import DIGITS_FILE, write_digits
from shared.bundle import read_manifest, write_manifest
from tests import tinysimilarity, tinytext
from tests.procs import ROOT, free_port
from tests.tinymodels import seed_cache
from tests.tinyserve import (
    DEAD_REGISTRY,
    seed_two_speed_cache,
    serve_cached,
    serve_classify,
    slow_classifier,
)

pytestmark = pytest.mark.integration

LOAD = ["--services", "classify", "--users", "2", "--spawn-rate", "2", "--duration", "3s"]
#: generous, for a short run on a shared machine: the slow variant is several times slower
TOLERANCE = "p50=2.0,p95=3.0,p99=5.0,rps=0.75"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-speed bundle's cache, and the digit PNGs every run sends (made once here:
    training.data imports torch, seconds per process on a busy machine)."""
    root = tmp_path_factory.mktemp("loadtest")
    seed_two_speed_cache(root / "cache")
    write_digits(root / "digits.json")
    return root / "cache"


@pytest.fixture(scope="module")
def fast(cache: Path) -> Iterator[str]:
    with serve_classify(cache, cache.parent / "fast.log", variant="fp32") as url:
        yield url


def loadtest(module: str, url: str, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m loadtests.<module>` against `url` (as every service's URL: one runs), with
    the gate calibrating on the cached classify bundle."""
    urls = {f"{name.upper()}_URL": url for name in ("classify", "similarity", "text")}
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(cache.parent),
        **urls,
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,
        "MODEL_CACHE_DIR": str(cache),
        "OMP_NUM_THREADS": "1",
        DIGITS_FILE: str(cache.parent / "digits.json"),
    }
    return subprocess.run(
        [sys.executable, "-m", f"loadtests.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_smoke_loadtest_has_no_failures_and_writes_its_reports(
    fast: str, cache: Path, tmp_path: Path
) -> None:
    done = loadtest("run", fast, cache, *LOAD, "--reports", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| classify POST")]
    assert {row.split("|")[1].strip() for row in rows} >= {
        "classify POST /v1/classify [png]",
        "classify POST /v1/classify [json]",
    }
    for row in rows:
        requests, failures = (int(cell) for cell in row.split("|")[2:4])
        assert requests > 0 and failures == 0, row
    (report,) = tmp_path.iterdir()
    assert (report / "report.html").stat().st_size > 0
    assert "Request Count" in (report / "stats_stats.csv").read_text()


@pytest.fixture(scope="module")
def baseline(fast: str, cache: Path) -> Path:
    """`--update-baseline` against the fast variant: the gate's reference for these tests."""
    path = cache.parent / "baseline.json"
    written = loadtest("check", fast, cache, *LOAD, *gate(path), "--update-baseline")
    assert written.returncode == 0, written.stdout + written.stderr
    return path


def gate(baseline: Path) -> list[str]:
    reports = str(baseline.parent / "reports")
    return [
        "--repeats",
        "2",
        "--baseline",
        str(baseline),
        "--reports",
        reports,
    ]


def test_update_baseline_records_the_machine_load_and_every_endpoint(baseline: Path) -> None:
    recorded = json.loads(baseline.read_text())
    assert recorded["machine"]["cores"] >= 1 and recorded["machine"]["cpu"]
    assert recorded["load"]["services"] == ["classify"] and recorded["load"]["users"] == 2
    assert recorded["calibration_ms"] > 0
    png = recorded["endpoints"]["classify POST /v1/classify [png]"]
    assert png["requests"] > 20 and png["failures"] == 0
    assert 0 < png["p50_ms"] <= png["p95_ms"] <= png["p99_ms"]


def test_gate_passes_on_its_baseline_and_on_a_freshly_trained_model(
    fast: str, cache: Path, baseline: Path, tmp_path: Path
) -> None:
    """The yardstick is fixed: another version of the same model and variant is comparable."""
    same = loadtest("check", fast, cache, *gate(baseline), "--tolerance", TOLERANCE)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "PASS" in same.stdout and "reference-mlp/1" in same.stdout
    seed_cache(tmp_path / "fresh", version="2", seed=5)  # retrained: other weights, version 2
    with serve_classify(tmp_path / "fresh", tmp_path / "fresh.log", variant="fp32") as fresh:
        again = loadtest("check", fresh, cache, *gate(baseline), "--tolerance", TOLERANCE)
    assert again.returncode == 0, again.stdout + again.stderr


def test_gate_fails_on_a_genuinely_slower_build(
    cache: Path, baseline: Path, tmp_path: Path
) -> None:
    """The same model name and variant, built slower (same answers, far more work): judged,
    and failed."""
    bundle_dir = seed_cache(tmp_path / "slower")
    onnx.save(slow_classifier(), bundle_dir / "model.onnx")
    manifest = read_manifest(bundle_dir)
    write_manifest(bundle_dir, {k: v for k, v in manifest.items() if k != "files"})
    with serve_classify(tmp_path / "slower", tmp_path / "slow.log", variant="fp32") as slow:
        slower = loadtest("check", slow, cache, *gate(baseline), "--tolerance", TOLERANCE)
    assert slower.returncode == 1, slower.stdout + slower.stderr
    assert "FAIL: latency regression" in slower.stdout
    assert "classify POST /v1/classify [png]: p50 +" in slower.stdout


def test_gate_refuses_another_variant_or_another_load_instead_of_judging(
    fast: str, cache: Path, baseline: Path, tmp_path: Path
) -> None:
    with serve_classify(cache, tmp_path / "other.log", variant="slow") as other:
        refused = loadtest("check", other, cache, *gate(baseline))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "REFUSED" in refused.stdout and "variant 'fp32' -> 'slow'" in refused.stdout
    busier = loadtest("check", fast, cache, *gate(baseline), "--users", "3")
    assert busier.returncode == 2, busier.stdout + busier.stderr
    assert "load users: baseline 2, now 3" in busier.stdout


def test_gate_fails_when_more_than_one_percent_of_requests_fail(
    cache: Path, baseline: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request fails
    failing = loadtest("check", nobody, cache, *gate(baseline))
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "100.00% of the requests failed" in failing.stdout


#: service → (how its cache gets a tiny bundle, the endpoints its Locust user calls)
LIVE_USERS = {
    "similarity": (
        tinysimilarity.seed_cache,  # the gallery comes with the bundle
        {"POST /v1/similarity/compare", "POST /v1/similarity/search", "POST /v1/similarity/embed"},
    ),
    "text": (tinytext.seed_cache, {"POST /v1/text/classify", "POST /v1/text/generate"}),
}


@pytest.mark.parametrize("service", sorted(LIVE_USERS))
def test_service_user_runs_live_without_failures(service: str, cache: Path, tmp_path: Path) -> None:
    """A service's Locust user against a real process of it serving a tiny bundle."""
    seed, endpoints = LIVE_USERS[service]
    seed(tmp_path / "cache")
    # no think time: hundreds of requests, so even the lightest-weighted task (similarity's
    # embed, 1 in 7) is all but certain to be picked; with pauses ~25 requests left it out 2%
    load = ["--services", service, "--users", "2", "--spawn-rate", "2", "--duration", "4s"]
    load += ["--think-time", "0"]
    with serve_cached(service, tmp_path / "cache", tmp_path / f"{service}.log") as served:
        done = loadtest("run", served.url, cache, *load, "--reports", str(tmp_path / "reports"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(f"| {service} POST")]
    assert {row.split("|")[1].strip() for row in rows} == {f"{service} {e}" for e in endpoints}
    for row in rows:
        requests, failures = (int(cell) for cell in row.split("|")[2:4])
        assert requests > 0 and failures == 0, row
