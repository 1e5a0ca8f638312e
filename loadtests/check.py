"""`make loadtest-check`: the latency regression gate against loadtests/baseline.json.

Runs the load REPEATS times; takes each endpoint's median p50/p95/p99 and each service's median
RPS. During each run it samples a calibration figure on the same machine (raw onnxruntime
batch-1 latency of a fixed reference workload built by loadtests/calibration.py, never the
registry's model), and compares ratios to it, not absolute times from another day or machine:
latency / calibration, RPS x calibration.
Refuses (exit 2) to compare unlike with unlike: when a service serves another model name or
variant than the baseline recorded, when the load settings differ from the baseline's, or when
the baseline was calibrated with another yardstick; it says what differs and how to re-baseline.
Fails (exit 1) when an endpoint's ratio regressed past its tolerance (default +25% p50, +20%
p95, +30% p99, -15% RPS), when a baseline endpoint got no requests, or when more than 1% of
all requests failed.
`--update-baseline` measures the same way and rewrites the baseline, machine described.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.calibration import REFERENCE, Yardstick
from loadtests.run import (
    MAX_FAIL_RATIO,
    RUN_DEFAULTS,
    EndpointStats,
    Load,
    add_load_arguments,
    format_table,
    load_from,
    run_locust,
)
from loadtests.users import service_url
from loadtests.users.payloads import write_digits

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "loadtests" / "baseline.json"
METRICS = ("p50_ms", "p95_ms", "p99_ms", "rps")
#: throughput is gated per service ("<service> total"), percentiles per endpoint: a user with
#: several weighted tasks picks them at random, so one endpoint's share of the requests (and
#: its RPS) varies from run to run by chance, while the service's total does not
TOTAL = "total"
TOLERANCE = {"p50_ms": 0.25, "p95_ms": 0.20, "p99_ms": 0.30, "rps": 0.15}
#: baseline requests (all repeats) a metric needs to be gated: a percentile is only judged
#: with at least 5 samples above it (p95: 100, p99: 500); fewer and one stray request moves it
MIN_SAMPLES = {"p50_ms": 20, "p95_ms": 100, "p99_ms": 500, "rps": 20}
#: a closed loop (no think time), so RPS measures throughput rather than the users' pauses
GATE_DEFAULTS = {**RUN_DEFAULTS, "duration": "20s", "think_time": "0"}


def median_stats(runs: list[dict[str, EndpointStats]]) -> dict[str, dict[str, float]]:
    """Per endpoint: the median of each metric over the runs, and the summed counts; per
    service ("<service> total"): the median of its summed RPS."""
    merged: dict[str, dict[str, float]] = {}
    for name in sorted({name for run in runs for name in run}):
        seen = [run[name] for run in runs if name in run]
        merged[name] = {m: statistics.median(getattr(s, m) for s in seen) for m in METRICS}
        merged[name]["requests"] = sum(s.requests for s in seen)
        merged[name]["failures"] = sum(s.failures for s in seen)
    for service in sorted({name.split()[0] for run in runs for name in run}):
        rates = [sum(s.rps for n, s in run.items() if n.split()[0] == service) for run in runs]
        counted = [s for run in runs for n, s in run.items() if n.split()[0] == service]
        merged[f"{service} {TOTAL}"] = {
            "rps": statistics.median(rates),
            "requests": sum(s.requests for s in counted),
            "failures": sum(s.failures for s in counted),
        }
    return merged


def gated_metrics(name: str) -> tuple[str, ...]:
    return ("rps",) if name.endswith(f" {TOTAL}") else ("p50_ms", "p95_ms", "p99_ms")


def normalized(metric: str, value: float, calibration_ms: float) -> float:
    """Latency in calibration units; throughput per calibration unit of time."""
    return value * calibration_ms if metric == "rps" else value / calibration_ms


def judge(
    name: str, metric: str, before: tuple[float, float], after: tuple[float, float], limit: float
) -> tuple[str, str | None]:
    """One table row and, when regressed, the reason. before/after are (value, calibration)."""
    change = normalized(metric, *after) / normalized(metric, *before) - 1
    bad = change < -limit if metric == "rps" else change > limit
    signed = -limit if metric == "rps" else limit
    label = metric.removesuffix("_ms")
    row = (
        f"| {name:<48} | {label:<6} | {before[0]:>8.2f} | {after[0]:>8.2f} | {change:>+7.0%} "
        f"| {signed:>+5.0%} |" + ("  REGRESSED" if bad else "")
    )
    if not bad:
        return row, None
    unit = "req/s" if metric == "rps" else "ms"
    what = "throughput" if metric == "rps" else label
    return row, (
        f"{name}: {what} {change:+.0%} against the baseline (limit {signed:+.0%}; "
        f"{before[0]:.2f} -> {after[0]:.2f} {unit})"
    )


def compare(
    baseline: dict[str, Any],
    current: dict[str, dict[str, float]],
    calibration_ms: float,
    tolerance: dict[str, float],
) -> tuple[list[str], list[str]]:
    """(report lines, regressions) of the current medians against the baseline's endpoints."""
    lines = [
        f"| {'endpoint':<48} | metric | baseline |      now | change* | limit |",
        f"|{'-' * 50}|--------|----------|----------|---------|-------|",
    ]
    regressions = []
    for name, base in baseline["endpoints"].items():
        now = current.get(name)
        if now is None or now["requests"] == 0:
            regressions.append(f"{name}: no successful requests (baseline {base['requests']})")
            continue
        for metric in gated_metrics(name):
            if base["requests"] < MIN_SAMPLES[metric]:
                continue
            row, reason = judge(
                name,
                metric,
                (base[metric], baseline["calibration_ms"]),
                (now[metric], calibration_ms),
                tolerance[metric],
            )
            lines.append(row)
            regressions += [reason] if reason else []
    lines += [
        f"  {n}: not gated (not in the baseline, or too few requests there)"
        for n in sorted(set(current) - set(baseline["endpoints"]))
    ]
    lines.append(
        "  percentiles are gated from "
        + ", ".join(
            f"{n} baseline requests ({m.removesuffix('_ms')})"
            for m, n in MIN_SAMPLES.items()
            if m != "rps"
        )
    )
    lines.append(
        "* change of the ratio to the calibration (the reference workload's onnxruntime batch-1 "
        "mean, during the runs): "
        f"baseline {baseline['calibration_ms']:.4f} ms, now {calibration_ms:.4f} ms"
    )
    return lines, regressions


def machine() -> dict[str, Any]:
    """What the baseline was measured on: the ratios travel, the absolute figures do not."""
    from importlib.metadata import version

    from shared.settings import available_cores

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": version("onnxruntime"),
        "locust": version("locust"),
    }


def parse_tolerance(spec: str) -> dict[str, float]:
    """Tolerances such as p95=0.2,rps=0.15 over the defaults (fractions: 0.2 is 20%)."""
    tolerance = dict(TOLERANCE)
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, _, value = item.partition("=")
        key = key if key == "rps" else f"{key.removesuffix('_ms')}_ms"
        if key not in tolerance:
            raise SystemExit(f"--tolerance: unknown metric {item!r}; use p50, p95, p99, rps")
        tolerance[key] = abs(float(value))
    return tolerance


@dataclass(frozen=True)
class Measured:
    """REPEATS runs reduced: per-endpoint medians, the calibration and the failed share."""

    endpoints: dict[str, dict[str, float]]
    calibration_ms: float
    calibration_model: str
    failed: float


def measure(load: Load, args: argparse.Namespace, out_dir: Path) -> Measured:
    """REPEATS Locust runs, the yardstick sampled during each; medians over the runs."""
    digits = write_digits(out_dir / "digits.json")
    yardstick = Yardstick()
    runs, times = [], []
    for repeat in range(args.repeats):
        yardstick.reset()
        with yardstick.sampling():
            runs.append(run_locust(load, out_dir / f"run-{repeat + 1}", digits))
        times.append(yardstick.mean_ms)
        print(
            f"run {repeat + 1}/{args.repeats} (calibration {times[-1]:.3f} ms): "
            f"{format_table(runs[-1], load)}\n",
            flush=True,
        )
    failed = sum(s.failures for run in runs for s in run.values())
    total = failed + sum(s.requests for run in runs for s in run.values())
    return Measured(
        median_stats(runs), statistics.median(times), yardstick.description, failed / max(1, total)
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make loadtest-check", description=__doc__.split("\n")[0])
    add_load_arguments(p)
    env = os.environ.get
    p.add_argument("--repeats", type=int, default=int(env("REPEATS", "3")))
    p.add_argument("--baseline", type=Path, default=BASELINE)
    p.add_argument("--update-baseline", action="store_true", help="measure and rewrite it")
    p.add_argument(
        "--tolerance",
        default=env("LOADTEST_TOLERANCE", ""),
        help='fractions per metric, e.g. "p95=0.2,rps=0.15" (LOADTEST_TOLERANCE); defaults '
        + ", ".join(f"{k.removesuffix('_ms')} {v:.0%}" for k, v in TOLERANCE.items()),
    )
    return p


def served(services: tuple[str, ...]) -> dict[str, Any]:
    """The model each service is serving (its /readyz), recorded with the baseline; None for a
    service that does not answer (the run then fails on its failed requests)."""
    found: dict[str, Any] = {}
    for name in services:
        try:
            found[name] = httpx.get(f"{service_url(name)}/readyz", timeout=10).json().get("model")
        except (httpx.HTTPError, ValueError):
            found[name] = None
    return found


#: what must match between the baseline and now for the figures to be comparable
IDENTITY = ("name", "variant")


def unlike(baseline: dict[str, Any], load: Load, now: dict[str, Any]) -> list[str]:
    """Why this run cannot be compared with the baseline (empty: it can). A different version
    of the same model and variant is comparable: the yardstick does not depend on it."""
    reasons = []
    if baseline.get("calibration_model") != REFERENCE:
        reasons.append(
            f"the baseline was calibrated on {baseline.get('calibration_model')!r}, this gate "
            f"on {REFERENCE!r}"
        )
    recorded = {**baseline.get("load", {}), "services": list(baseline["load"]["services"])}
    current = {**asdict(load), "services": list(load.services)}
    for key in sorted(set(recorded) | set(current)):
        if str(recorded.get(key)) != str(current.get(key)):
            reasons.append(f"load {key}: baseline {recorded.get(key)!r}, now {current.get(key)!r}")
    for name in load.services:
        before, after = (baseline.get("served") or {}).get(name), now.get(name)
        if before is None or after is None:
            continue  # not recorded / not answering: the endpoint checks report it
        differs = [
            f"{k} {before.get(k)!r} -> {after.get(k)!r}"
            for k in IDENTITY
            if before.get(k) != after.get(k)
        ]
        if differs:
            reasons.append(f"{name} serves another model: " + ", ".join(differs))
    return reasons


def write_baseline(path: Path, load: Load, measured: Measured) -> None:
    baseline = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "load": {**asdict(load), "services": list(load.services)},
        "served": served(load.services),
        "calibration_model": measured.calibration_model,
        "calibration_ms": measured.calibration_ms,
        "endpoints": measured.endpoints,
    }
    path.write_text(json.dumps(baseline, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    baseline = None if args.update_baseline else json.loads(args.baseline.read_text())
    # the baseline's load unless a flag or the environment says otherwise: like for like
    load = load_from(args, {**GATE_DEFAULTS, **(baseline or {}).get("load", {})})
    if baseline is not None:
        reasons = unlike(baseline, load, served(load.services))
        if reasons:
            print(
                "REFUSED: this run is not comparable with the baseline, so no regression is "
                "judged:\n  " + "\n  ".join(reasons) + "\nServe what the baseline served "
                "with its load (drop SERVICES/USERS/... overrides), or measure a new baseline "
                "for this setup: make loadtest-check ARGS=--update-baseline"
            )
            return 2
    out_dir = args.reports / f"check-{time.strftime('%Y%m%d-%H%M%S')}"
    measured = measure(load, args, out_dir)
    print(
        f"median of {args.repeats} runs; calibration {measured.calibration_ms:.4f} ms "
        f"({measured.calibration_model}); reports {out_dir}"
    )
    if measured.failed > MAX_FAIL_RATIO:
        print(f"FAIL: {measured.failed:.2%} of the requests failed (over {MAX_FAIL_RATIO:.0%})")
        return 1
    if baseline is None:
        write_baseline(args.baseline, load, measured)
        print(f"baseline written to {args.baseline}")
        return 0
    gated = {
        name: values
        for name, values in baseline["endpoints"].items()
        if name.split()[0] in load.services and values["requests"] >= MIN_SAMPLES["p50_ms"]
    }
    lines, regressions = compare(
        {**baseline, "endpoints": gated},
        measured.endpoints,
        measured.calibration_ms,
        parse_tolerance(args.tolerance),
    )
    print("\n".join(lines))
    if regressions:
        print("FAIL: latency regression\n  " + "\n  ".join(regressions))
        return 1
    print("PASS: no endpoint regressed past its tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
