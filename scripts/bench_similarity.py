"""The similarity figures: held-out quality of the served bundle, ORT throughput, search latency.

python -m scripts.bench_similarity [--model-uri models:/similarity@production] [--url URL]

Needs the MLflow server (MLFLOW_TRACKING_URI). Quality (verification AUC, EER, recall@1/@5,
mAP) is measured on the bundle's default variant in onnxruntime, test digits against the
training images. Throughput: embeddings per second at batch 32 (1 thread and all cores).
Search latency: sequential `POST /v1/similarity/search` (k=5) over HTTP against a gallery of the
full training set, p50/p99; with no `--url` a service is started on a free port and stopped
after. Not a test: the numbers are what this machine gives, noisy when its cores are shared.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from shared.bundle import Bundle


def quality(bundle: Bundle, variant: str) -> dict[str, float]:
    """Held-out metrics of the bundle's encoder, as training and export compute them."""
    from shared.media import ImageSpec
    from shared.onnx import OnnxModel
    from training.data import load_splits, preprocess
    from training.export.onnx import onnx_logits
    from training.similarity_eval import evaluate

    model = OnnxModel.from_bundle(bundle, variant, 1)
    spec = ImageSpec.from_manifest(bundle.preprocessing)
    splits = load_splits()
    emb = {n: onnx_logits(model, preprocess(s.images, spec)) for n, s in splits.items()}
    labels = {n: s.labels for n, s in splits.items()}
    result = evaluate(
        (emb["val"], labels["val"]), (emb["test"], labels["test"]), (emb["train"], labels["train"])
    )
    return result.metrics


def throughput(bundle: Bundle, variant: str, threads: int, runs: int = 200) -> float:
    """Embeddings per second at batch 32 (median of `runs` timed runs)."""
    from shared.onnx import OnnxModel
    from training.export.evaluate import time_runs

    model = OnnxModel.from_bundle(bundle, variant, threads)
    shape = [32, *bundle.inputs[0].shape[1:]]
    batch = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return 32 / statistics.median(time_runs(model, batch, runs))


def search_latency(url: str, requests: int) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, gallery size) of sequential k=5 searches with test digits."""
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    test = load_splits()["test"]
    bodies = [
        {"image": base64.b64encode(encode_png(gray_to_image(i))).decode(), "k": 5}
        for i in test.images[:50]
    ]
    times = []
    with httpx.Client(base_url=url, timeout=30) as http:
        size = http.get("/v1/similarity/gallery").json()["size"]
        for i in range(20 + requests):
            started = time.perf_counter()
            http.post("/v1/similarity/search", json=bodies[i % len(bodies)]).raise_for_status()
            if i >= 20:  # warm-up excluded
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), float(np.percentile(times, 99)), size


def start_service(stack: contextlib.ExitStack, model_uri: str, workdir: Path) -> str:
    """Start `python -m services.similarity` (1 ORT thread) until `stack` closes; its URL."""
    from tests.procs import free_port, running, wait_http

    port, log = free_port(), workdir / "service.log"
    env = {"MODEL_URI": model_uri, "MODEL_CACHE_DIR": str(workdir / "cache")}
    env["ONNX_INTRA_OP_THREADS"] = "1"
    cmd = [sys.executable, "-m", "services.similarity", "--port", str(port)]
    proc = stack.enter_context(running(cmd, log, env))
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
    return f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from shared.registry import RegistryClient
    from shared.settings import available_cores

    parser = argparse.ArgumentParser(prog="python -m scripts.bench_similarity", description=__doc__)
    parser.add_argument("--model-uri", default="models:/similarity@production")
    parser.add_argument("--url", help="a running similarity service (default: start one)")
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args(argv)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    registry = RegistryClient.from_environment(tracking_uri, timeout_s=30, max_retries=3)
    with (
        tempfile.TemporaryDirectory(prefix="bench-similarity-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        fetched = registry.fetch(args.model_uri, Path(tmp) / "bench-cache")
        bundle, variant = fetched.bundle, fetched.bundle.default_variant
        print(f"{fetched.name} version {fetched.version}, variant {variant}", flush=True)
        m = quality(bundle, variant)
        print(
            f"quality (test digits vs training gallery): AUC {m['test_auc']:.6f}, EER "
            f"{m['test_eer']:.3%}, recall@1 {m['test_recall_at_1']:.2%}, recall@5 "
            f"{m['test_recall_at_5']:.2%}, mAP {m['test_map']:.5f}, threshold {m['threshold']:.4f}"
        )
        for name in bundle.variants:
            for threads in sorted({1, available_cores()}):
                ips = throughput(bundle, name, threads)
                print(f"embed throughput, {name}, batch 32, {threads} thread(s): {ips:.0f} img/s")
        url = args.url or start_service(stack, args.model_uri, Path(tmp))
        p50, p99, size = search_latency(url, args.requests)
        print(
            f"search over HTTP ({args.requests} sequential k=5 requests, gallery {size}): "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
