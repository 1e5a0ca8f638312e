"""`modelplane bench observe`: what drift and the prediction log cost classify's p50 at
concurrency 8.

Four classify processes serve the same bundle side by side: nothing observed (drift off, no
log), drift only, drift + every request logged to JSONL, drift + every request posted to a
stalled CloudEvents sink (accepts, never answers). Each is driven in turn by an httpx client at
concurrency 8 for `--seconds`, in `--rounds` interleaved rounds (medians taken), so a busy
machine slows all four alike. The bundle is the registered classify model (`--model-uri`,
cached), or with `--tiny` the tests' fitted 8x8 digit classifier with a drift reference, where
the model's own time is smallest and the overhead shows most.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.bench_serve import model_arguments, served

CONCURRENCY = 8


def configurations(log_dir: Path, stalled_url: str) -> dict[str, dict[str, str]]:
    return {
        "nothing observed": {"DRIFT_ENABLED": "false", "PREDICTION_LOG_RATE": "0"},
        "drift": {"PREDICTION_LOG_RATE": "0"},
        "drift + JSONL log (100%)": {
            "PREDICTION_LOG_RATE": "1",
            "PREDICTION_LOG_DIR": str(log_dir / "predictions"),
        },
        "drift + stalled CloudEvents sink (100%)": {
            "PREDICTION_LOG_RATE": "1",
            "PREDICTION_LOG_URL": stalled_url,
            "PREDICTION_LOG_TIMEOUT_S": "30",
        },
    }


async def drive(url: str, bodies: list[bytes], seconds: float) -> list[float]:
    """Closed loop, CONCURRENCY clients, for `seconds`: every request's latency in ms."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=30) as client:

        async def user(index: int) -> None:
            n = index
            while time.perf_counter() < stop:
                started = time.perf_counter()
                answer = await client.post(
                    f"{url}/v1/classify",
                    content=bodies[n % len(bodies)],
                    headers={"content-type": "image/png"},
                )
                answer.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
                n += CONCURRENCY

        await asyncio.gather(*(user(i) for i in range(CONCURRENCY)))
    return latencies


def digit_bodies(count: int = 64) -> list[bytes]:
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    return [encode_png(gray_to_image(image)) for image in load_splits()["test"].images[:count]]


def side_by_side_arguments(prog: str, doc: str | None, argv: list[str] | None) -> Any:
    """The options of a bench that runs configurations side by side in interleaved rounds:
    which bundle (or --tiny), seconds and rounds (--quick: 2 s, 1 round), threads."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    model_arguments(parser)
    parser.add_argument("--tiny", action="store_true", help="serve the tests' tiny bundle")
    parser.add_argument("--seconds", type=float, default=10, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--quick", action="store_true", help="2 s, 1 round (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = side_by_side_arguments("modelplane bench observe", __doc__, argv)
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(1024)
        work = Path(tmp)
        env = {
            "MODEL_URI": args.model_uri,
            "MLFLOW_TRACKING_URI": args.tracking_uri,
            "MODEL_CACHE_DIR": str(args.cache_dir),
            "ONNX_INTRA_OP_THREADS": str(args.threads),
            "LOG_LEVEL": "WARNING",
            "GRPC_PORT": "0",  # four processes side by side: HTTP only
        }
        bodies = digit_bodies()
        if args.tiny:
            from tests.tinydrift import CLEAN, digit_pixels, pngs, seed_drift_cache

            seed_drift_cache(work / "cache")
            env |= {
                "MODEL_CACHE_DIR": str(work / "cache"),
                "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
            }
            bodies = pngs(digit_pixels(CLEAN[:64]))
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}/events"
        configs = configurations(work, url)
        print(
            f"classify ({'tiny bundle' if args.tiny else args.model_uri}), concurrency "
            f"{CONCURRENCY}, {args.rounds} round(s) of {args.seconds:g} s per configuration",
            flush=True,
        )
        return measure(configs, env, bodies, work, args.seconds, args.rounds)


def measure(
    configs: dict[str, dict[str, str]],
    env: dict[str, str],
    bodies: list[bytes],
    work: Path,
    seconds: float,
    rounds: int,
) -> int:
    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in configs}
    with ExitStack() as stack:
        urls = {}
        for label, extra in configs.items():
            print(f"  starting: {label}", flush=True)
            urls[label] = stack.enter_context(served({**env, **extra}, work, label)).url
        for url in urls.values():
            asyncio.run(drive(url, bodies, 1.0))  # warm up
        for round_ in range(rounds):
            for label, url in urls.items():
                latencies = asyncio.run(drive(url, bodies, seconds))
                p50, p99 = np.percentile(latencies, [50, 99])
                results[label].append((float(p50), float(p99), len(latencies) / seconds))
                print(f"  round {round_ + 1}: {label}: p50 {p50:.2f} ms", flush=True)
    base = statistics.median(r[0] for r in results["nothing observed"])
    print("\n| configuration | p50 ms | p99 ms | RPS | p50 vs nothing observed |")
    print("|---|---:|---:|---:|---:|")
    for label, rows in results.items():
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        rps = statistics.median(r[2] for r in rows)
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {rps:.0f} | {(p50 / base - 1) * 100:+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
