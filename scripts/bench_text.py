"""Text benchmark (not a test): the figures of docs/text.md.

- generation tokens/s with and without the KV cache at 128 new tokens (greedy, EOS ignored),
  for the torch and the onnx variant,
- time to first token: in-process, and over HTTP from a running service with `--url`,
- classify throughput of the fp32 and int8-dynamic ONNX variants at batch 32.

    python -m scripts.bench_text --tracking-uri http://127.0.0.1:5000 [--url http://127.0.0.1:8005]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from shared.registry import RegistryClient


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--url", help="a running text service, for TTFT over HTTP")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only", choices=("generate", "classify"), help="measure one model only")
    p.add_argument("--cache-dir", type=Path, default=Path(".modelplane/bench-cache"))
    return p.parse_args(argv)


def generation(args: argparse.Namespace, registry: RegistryClient) -> dict[str, float]:
    import torch

    from models.text import load_text_bundle
    from models.text_onnx import OnnxSeq2Seq
    from training.export.text_generate import speed

    torch.set_num_threads(args.threads)
    bundle = registry.fetch("models:/text-generate@production", args.cache_dir).bundle
    engines = {"torch": load_text_bundle(bundle)}
    if "onnx" in bundle.variants:
        engines["onnx"] = OnnxSeq2Seq(bundle.path, engines["torch"].config, args.threads)
    src = json.loads(bundle.file(bundle.manifest["smoke_test"]).read_text())[0]["src"]
    figures = {}
    for name, engine in engines.items():
        figures.update(speed(engine, src, args.runs, name))
        figures[f"{name}_ttft_ms_in_process"] = first_token_ms(engine, src)
    return figures


def first_token_ms(engine: object, src: list[int]) -> float:
    """Milliseconds from the request to the first generated token (encoder + first step)."""
    from models.decoding import DecodeOptions, generate

    times: list[float] = []
    started = time.perf_counter()
    options = DecodeOptions(max_new_tokens=128, stop_at_eos=False)
    generate(engine, src, options, lambda _: times.append(time.perf_counter() - started))  # type: ignore[arg-type]
    return times[0] * 1000


def ttft_http(url: str, runs: int) -> dict[str, float]:
    """Median time to the first `token` event and to the final `result` of a streamed request."""
    import httpx

    body = {"text": "def add(a, b):\n    return a + b", "stream": True, "max_new_tokens": 64}
    firsts, totals = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(runs):
            started = time.perf_counter()
            first = None
            with client.stream("POST", "/v1/text/generate", json=body) as response:
                for line in response.iter_lines():
                    if line == "event: token" and first is None:
                        first = time.perf_counter() - started
            totals.append(time.perf_counter() - started)
            firsts.append(first if first is not None else totals[-1])
    return {
        "ttft_ms_http": float(np.median(firsts) * 1000),
        "stream_total_ms_http": float(np.median(totals) * 1000),
    }


def classify(args: argparse.Namespace, registry: RegistryClient) -> dict[str, float]:
    from shared.onnx import OnnxModel
    from training.export.evaluate import THROUGHPUT_BATCH, time_runs
    from training.export.text_classify import test_inputs

    fetched = registry.fetch("models:/text-classify@production", args.cache_dir)
    inputs, _ = test_inputs(fetched, 10)
    batch = np.resize(inputs, (THROUGHPUT_BATCH, inputs.shape[1]))
    figures = {}
    for variant in fetched.bundle.variants:
        model = OnnxModel.from_bundle(fetched.bundle, variant, args.threads)
        seconds = float(np.median(time_runs(model, batch, args.runs * 10)))
        figures[f"classify_{variant}_texts_per_s_b32"] = THROUGHPUT_BATCH / seconds
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tracking_uri:
        print("error: --tracking-uri (or MLFLOW_TRACKING_URI) is required", file=sys.stderr)
        return 2
    registry = RegistryClient.from_environment(args.tracking_uri, timeout_s=30)
    figures = {}
    if args.only != "classify":
        figures.update(generation(args, registry))
    if args.only != "generate":
        figures.update(classify(args, registry))
    if args.url:
        figures.update(ttft_http(args.url, args.runs))
    for key, value in figures.items():
        print(f"{key:36s} {value:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
