"""`make soak`: a service driven at half its measured capacity for minutes, watched for leaks.

The classify service is started from the cached bundle, its capacity measured with wrk (8
connections, closed loop), then it is driven at half that rate (wrk with a per-request
`delay()` pacing each connection) in segments; after each segment the process's resident
memory and open file descriptors are sampled. Warm-up segments are left out, and a straight
line through the rest gives the growth per 1,000 requests. Exit 1 when RSS grows faster than
`--max-kb-per-1k` or descriptors grow at all beyond noise, or when any request failed.
Not part of the test suite (minutes); needs `wrk` (Debian package, `make soak` installs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from loadtests.bench_serve import digit_png, model_arguments, rss_mb, served, warm_up, wrk


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_1k(requests: list[int], values: list[float]) -> float:
    """Least-squares growth of `values` per 1,000 requests (0 with fewer than two samples)."""
    if len(requests) < 2 or requests[-1] == requests[0]:
        return 0.0
    return float(np.polyfit(np.asarray(requests, float), np.asarray(values, float), 1)[0]) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make soak", description=__doc__.split("\n")[0])
    model_arguments(parser)
    parser.add_argument("--variant", default="", help="bundle variant (default: the bundle's)")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--segment-s", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--warmup-segments", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--max-kb-per-1k", type=float, default=64.0, help="RSS growth allowed")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make soak does it)")
    from shared.registry import RegistryClient

    registry = RegistryClient.from_environment(args.tracking_uri)
    registry.fetch(args.model_uri, args.cache_dir)  # cached and verified before the clock starts
    env = {
        "MLFLOW_TRACKING_URI": args.tracking_uri,
        "MODEL_URI": args.model_uri,
        "MODEL_VARIANT": args.variant,
        "MODEL_CACHE_DIR": str(args.cache_dir),
        "LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryDirectory() as tmp, served(env, Path(tmp), "soak") as service:
        body = digit_png(Path(tmp))
        warm_up(service.url, body)
        capacity = wrk(service.url, body, 8, 10, Path(tmp)).rps
        rate = capacity / 2
        delay_ms = args.connections / rate * 1000  # each connection waits this before a request
        model = httpx.get(f"{service.url}/v1/model", timeout=10).json()
        print(f"serving {model['name']} version {model['version']} variant {model['variant']}")
        print(
            f"capacity {capacity:.0f} req/s (wrk, 8 connections); soaking at {rate:.0f} req/s "
            f"for {args.minutes:g} min, a sample every {args.segment_s:g} s",
            flush=True,
        )
        pid = service.procs[0].pid
        print(f"| {'t s':>6} | {'requests':>9} | {'req/s':>7} | {'RSS MB':>7} | fds | errors |")
        print("|--------|-----------|---------|---------|-----|--------|")
        total, errors, samples = 0, 0, []
        started = time.monotonic()
        while time.monotonic() - started < args.minutes * 60:
            pacing = f"function delay() return {delay_ms:.3f} end\n"
            got = wrk(service.url, body, args.connections, args.segment_s, Path(tmp), pacing)
            # the delay comes on top of each request's own latency: steer towards the rate
            delay_ms = min(delay_ms * 4, max(0.0, delay_ms * got.rps / rate))
            total += got.requests
            errors += got.errors
            sample = (total, rss_mb(pid), open_fds(pid))
            samples.append(sample)
            print(
                f"| {time.monotonic() - started:>6.0f} | {total:>9} | {got.rps:>7.1f} | "
                f"{sample[1]:>7.1f} | {sample[2]:>3} | {got.errors:>6} |",
                flush=True,
            )
    kept = samples[args.warmup_segments :]
    counts = [s[0] for s in kept]
    rss_kb = slope_per_1k(counts, [s[1] * 1024 for s in kept])
    fds = slope_per_1k(counts, [s[2] for s in kept])
    span = counts[-1] - counts[0] if len(counts) > 1 else 0
    print(
        f"\nafter warm-up: {span} requests; RSS {rss_kb:+.2f} KB per 1,000 requests "
        f"({kept[0][1] if kept else 0:.1f} -> {kept[-1][1] if kept else 0:.1f} MB), open fds "
        f"{fds:+.3f} per 1,000 requests; {errors} failed requests"
    )
    leaking = rss_kb > args.max_kb_per_1k or fds * span / 1000 >= 2
    if errors or leaking or len(kept) < 2:
        print("soak FAILED" + (" (too short: raise --minutes)" if len(kept) < 2 else ""))
        return 1
    print("soak passed: flat within the allowance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
