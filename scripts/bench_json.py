"""`python -m scripts.bench_json`: does a faster JSON encoder (orjson) pay for itself here?

Times the encoding of the bodies the services really send (built with their own response
models), with the encoder each uses now (pydantic's Rust serializer through FastAPI's
`response_model`, or the stdlib `json` for V2 and hand-built bodies) against orjson, and prints
microseconds per response beside a typical request's latency, so the gain is seen in proportion.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from pydantic import TypeAdapter

from services.classify.schemas import ClassifyResponse
from services.similarity.schemas import EmbedResponse

MODEL = {"name": "m", "version": "1", "variant": "fp32"}


def bodies() -> dict[str, tuple[Any, Any, Callable[[], Any]]]:
    """name → (pydantic type, python body, the same body as orjson would get it)."""
    rng = np.random.default_rng(0)
    top5 = [{"label": str(i), "score": float(s)} for i, s in enumerate(rng.random(5))]
    classify = {"predictions": top5, "model": MODEL}
    vectors = rng.standard_normal((64, 128)).astype(np.float32)
    embed = {"embeddings": vectors.tolist(), "model": MODEL}
    logits = rng.standard_normal((32, 10)).astype(np.float32)
    v2 = {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [32, 10]}],
    }
    v2_json = {**v2, "outputs": [{**v2["outputs"][0], "data": logits.reshape(-1).tolist()}]}
    v2_numpy = {**v2, "outputs": [{**v2["outputs"][0], "data": logits.reshape(-1)}]}
    return {
        "classify top-5 (response_model)": (ClassifyResponse, classify, lambda: classify),
        "similarity embed 64x128 (response_model)": (EmbedResponse, embed, lambda: embed),
        "V2 infer 32x10 FP32 (json.dumps)": (None, v2_json, lambda: v2_numpy),
    }


def per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    number, _ = timeit.Timer(fn).autorange()
    runs = max(3, int(seconds / max(1e-9, timeit.timeit(fn, number=number) / number) / number))
    return min(timeit.repeat(fn, number=number, repeat=runs)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_json")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args(argv)
    print(f"| {'body':<42} | {'now µs':>8} | {'orjson µs':>9} | {'saved µs':>8} |")
    print(f"|{'-' * 44}|----------|-----------|----------|")
    for name, (model, body, for_orjson) in bodies().items():
        if model is not None:
            adapter = TypeAdapter(model)
            validated = adapter.validate_python(body)
            now = per_call_us(lambda a=adapter, v=validated: a.dump_json(v), args.seconds)
        else:
            now = per_call_us(
                lambda b=body: json.dumps(b, separators=(",", ":")).encode(), args.seconds
            )
        numpy_body = for_orjson()
        fast = per_call_us(
            lambda b=numpy_body: orjson.dumps(b, option=orjson.OPT_SERIALIZE_NUMPY), args.seconds
        )
        print(f"| {name:<42} | {now:>8.1f} | {fast:>9.1f} | {now - fast:>8.1f} |")
    print(
        "\nfor scale: a classify request over loopback HTTP takes ~5,000-13,000 µs at p50 "
        "(make bench-serve)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
