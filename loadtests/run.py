"""`make loadtest`: Locust, headless, against the running services (local, compose or a cluster).

Writes Locust's CSV stats and HTML report under loadtests/reports/<timestamp>/ and prints one
row per endpoint: requests, failures, RPS and p50/p95/p99 from every request's exact latency.
Settings: SERVICES, DURATION, USERS, SPAWN_RATE, THINK_TIME and <SERVICE>_URL (environment or
flags). Exits 1 when more than 1% of the requests failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.users import PORTS
from loadtests.users.payloads import DIGITS_FILE, write_digits

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
MAX_FAIL_RATIO = 0.01


@dataclass(frozen=True)
class Load:
    """How hard to drive the services: Locust's users, spawn rate, duration and think time."""

    services: tuple[str, ...]
    duration: str
    users: int
    spawn_rate: float
    think_time: str


@dataclass(frozen=True)
class EndpointStats:
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error: str = ""

    @property
    def fail_ratio(self) -> float:
        return self.failures / max(1, self.requests + self.failures)


def summarize(samples: dict[str, Any]) -> dict[str, EndpointStats]:
    """Per endpoint: successful requests per second over the run and exact percentiles."""
    seconds = max(1e-9, samples["stopped"] - samples["started"])
    stats = {}
    for name, found in samples["endpoints"].items():
        times = np.asarray(found["times_ms"], dtype=float)
        p50, p95, p99 = np.percentile(times, [50, 95, 99]) if times.size else (np.nan,) * 3
        stats[name] = EndpointStats(
            name,
            int(times.size),
            int(found["failures"]),
            times.size / seconds,
            float(p50),
            float(p95),
            float(p99),
            found.get("error", ""),
        )
    return stats


def run_locust(load: Load, out_dir: Path, digits: Path | None = None) -> dict[str, EndpointStats]:
    """One headless Locust run; its CSV, HTML report, samples and log land in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = digits or write_digits(out_dir / "digits.json")
    env = {
        **os.environ,
        "SERVICES": ",".join(load.services),
        "THINK_TIME": load.think_time,
        "LOADTEST_SAMPLES": str(out_dir / "samples.json"),
        DIGITS_FILE: str(digits),
    }
    cmd = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
        *("-u", str(load.users), "-r", str(load.spawn_rate), "-t", load.duration),
        *("--csv", str(out_dir / "stats"), "--html", str(out_dir / "report.html")),
        *("--only-summary", "--stop-timeout", "10", "--exit-code-on-error", "0"),
        *("--loglevel", "WARNING"),
    ]
    with (out_dir / "locust.log").open("wb") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    samples = out_dir / "samples.json"
    if done.returncode != 0 or not samples.exists():
        tail = (out_dir / "locust.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"locust exited {done.returncode}; its log ends:\n{tail}")
    return summarize(json.loads(samples.read_text()))


def format_table(stats: dict[str, EndpointStats], load: Load) -> str:
    head = (
        f"{load.users} users, spawn {load.spawn_rate}/s, {load.duration}, think time "
        f"{load.think_time} s\n"
        f"| {'endpoint':<48} | requests | fails |    RPS | p50 ms | p95 ms | p99 ms |\n"
        f"|{'-' * 50}|----------|-------|--------|--------|--------|--------|"
    )
    rows = [
        f"| {s.name:<48} | {s.requests:>8} | {s.failures:>5} | {s.rps:>6.1f} | {s.p50_ms:>6.1f} "
        f"| {s.p95_ms:>6.1f} | {s.p99_ms:>6.1f} |"
        for s in stats.values()
    ]
    errors = [f"  {s.name}: {s.error}" for s in stats.values() if s.error]
    return "\n".join([head, *rows, *(["first error per endpoint:", *errors] if errors else [])])


def fail_ratio(stats: dict[str, EndpointStats]) -> float:
    failed = sum(s.failures for s in stats.values())
    return failed / max(1, failed + sum(s.requests for s in stats.values()))


#: each load setting's environment variable, the same for `make loadtest` and the gate
LOAD_ENV = {
    "services": "SERVICES",
    "duration": "DURATION",
    "users": "USERS",
    "spawn_rate": "SPAWN_RATE",
    "think_time": "THINK_TIME",
}
RUN_DEFAULTS = {
    "services": ",".join(PORTS),
    "duration": "30s",
    "users": len(PORTS),  # Locust spreads users over the services: one each at least
    "spawn_rate": 2,
    "think_time": "0.1,0.5",
}


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load flags both targets share; unset ones come from LOAD_ENV, then defaults."""
    parser.add_argument("--services", help="comma list (SERVICES; default all)")
    parser.add_argument("--duration", help="Locust run time per run, e.g. 30s, 2m (DURATION)")
    parser.add_argument("--users", type=int, help="concurrent Locust users (USERS)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second (SPAWN_RATE)")
    parser.add_argument("--think-time", help='"MIN,MAX" seconds between requests (THINK_TIME)')
    parser.add_argument("--reports", type=Path, default=ROOT / "loadtests" / "reports")


def load_from(args: argparse.Namespace, defaults: dict[str, Any]) -> Load:
    """Each setting from its flag, else its environment variable, else `defaults`."""
    chosen = {}
    for field, env_name in LOAD_ENV.items():
        value = getattr(args, field)
        if value is None:
            value = os.environ.get(env_name) or defaults[field]
        chosen[field] = value
    listed = chosen["services"]  # a comma list, or a list in a baseline file
    listed = listed.split(",") if isinstance(listed, str) else listed
    services = tuple(s.strip() for s in listed if s.strip())
    unknown = sorted(set(services) - set(PORTS))
    if unknown:
        raise SystemExit(f"services: unknown {unknown}; known: {', '.join(PORTS)}")
    if int(chosen["users"]) < len(services):
        raise SystemExit(
            f"users: {chosen['users']} for {len(services)} services; Locust would leave a "
            "service without a user, so give each at least one (USERS)"
        )
    return Load(
        services,
        str(chosen["duration"]),
        int(chosen["users"]),
        float(chosen["spawn_rate"]),
        str(chosen["think_time"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make loadtest", description=__doc__.split("\n")[0])
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    load = load_from(args, RUN_DEFAULTS)
    out_dir = args.reports / time.strftime("%Y%m%d-%H%M%S")
    stats = run_locust(load, out_dir)
    print(format_table(stats, load))
    ratio = fail_ratio(stats)
    print(f"\nreports: {out_dir} (report.html, stats_*.csv); failed requests {ratio:.2%}")
    if ratio > MAX_FAIL_RATIO:
        print(f"FAIL: more than {MAX_FAIL_RATIO:.0%} of the requests failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
