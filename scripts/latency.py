"""p50/p99 latency of one-image classify requests over HTTP, sequential (concurrency 1).

python -m scripts.latency [--url http://127.0.0.1:8001] [--requests 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import numpy as np

from services.catalog import entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.latency")
    parser.add_argument("--url", default=entry("classify").local_url)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args(argv)
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    test = load_splits()["test"]
    bodies = [encode_png(gray_to_image(image)) for image in test.images[:50]]
    headers = {"content-type": "image/png"}
    times = []
    with httpx.Client(base_url=args.url, timeout=30) as http:
        for i in range(20 + args.requests):
            started = time.perf_counter()
            response = http.post(
                "/v1/classify?top_k=1", content=bodies[i % len(bodies)], headers=headers
            )
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if i >= 20:  # warm-up excluded
                times.append(elapsed)
    print(
        f"{args.requests} sequential requests to {args.url}/v1/classify (raw PNG body): "
        f"p50 {statistics.median(times):.2f} ms, p99 {np.percentile(times, 99):.2f} ms, "
        f"mean {statistics.fmean(times):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
