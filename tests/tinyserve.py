"""A tiny classify bundle with a fast and a genuinely slow variant, served by a real uvicorn.

The `slow` variant answers exactly like `fp32` but runs a chain of large MatMuls whose result is
multiplied by zero: a real, measurable slowdown (no sleep, no fault hook) for tests that must
prove a latency regression is caught, like serving fp32 against an int8 baseline.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shared.bundle import read_manifest, write_manifest
from tests.procs import free_port, running, wait_http
from tests.tinymodels import linear_logits, seed_cache, tiny_classifier

DEAD_REGISTRY = "http://127.0.0.1:9"  # nothing listens: the service serves its verified cache


def slow_classifier(
    seed: int = 0, width: int = 1024, layers: int = 192, base: onnx.ModelProto | None = None
) -> onnx.ModelProto:
    """`tiny_classifier` (or `base`, one like it) plus `layers` (N, width) x (width, width)
    MatMuls added times zero."""
    model = base if base is not None else tiny_classifier(seed)
    graph = model.graph
    rng = np.random.default_rng(seed + 7)
    # orthogonal weights keep the activations' norm constant, so nothing overflows into NaN
    square, _ = np.linalg.qr(rng.normal(size=(width, width)))
    project = rng.normal(0, 0.05, size=(3 * 8 * 8, width))
    for node in graph.node:
        if node.output[0] == "logits":
            node.output[0] = "fast_logits"
    nodes = [helper.make_node("MatMul", ["flat", "project"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "square"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"h{layers}", "axes"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["fast_logits", "nothing"], ["logits"]),
    ]
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            numpy_helper.from_array(project.astype(np.float32), "project"),
            numpy_helper.from_array(square.astype(np.float32), "square"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "zero"),
        ]
    )
    onnx.checker.check_model(model)
    return model


def seed_two_speed_cache(cache_dir: Path, width: int = 1024, layers: int = 192) -> Path:
    """A cached classify@production bundle (version 1) with variants `fp32` and `slow`
    (`slow_classifier(width=, layers=)`)."""
    bundle_dir = seed_cache(cache_dir)
    onnx.save(slow_classifier(width=width, layers=layers), bundle_dir / "model.slow.onnx")
    sample = np.load(bundle_dir / "sample_inputs.npy", allow_pickle=False)
    expected = linear_logits(tiny_classifier(), sample).astype(np.float32)
    np.save(bundle_dir / "expected_outputs.slow.npy", expected)
    manifest = read_manifest(bundle_dir)
    manifest.pop("files")
    manifest["variants"]["slow"] = {
        "file": "model.slow.onnx",
        "expected_outputs": "expected_outputs.slow.npy",
    }
    write_manifest(bundle_dir, manifest)
    return bundle_dir


@dataclass(frozen=True)
class Served:
    url: str
    proc: subprocess.Popen[bytes]


@contextmanager
def serve_cached(
    service: str, cache_dir: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """Run `python -m services.<service>` on a free port, serving its verified cache with the
    registry down (one onnxruntime thread, warnings only); ready when it yields, stopped by
    PID after."""
    port = free_port()
    settings = {
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,
        "MODEL_CACHE_DIR": str(cache_dir),
        "ONNX_INTRA_OP_THREADS": "1",
        "LOG_JSON": "true",
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", f"services.{service}", "--port", str(port)]
    with running(cmd, log, settings) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout_s=120)
        yield Served(f"http://127.0.0.1:{port}", proc)


@contextmanager
def serve_classify(
    cache_dir: Path, log: Path, variant: str = "", env: dict[str, str] | None = None
) -> Iterator[str]:
    """The classify service from the cache (`serve_cached`); yield its URL."""
    with serve_cached("classify", cache_dir, log, {"MODEL_VARIANT": variant, **(env or {})}) as s:
        yield s.url


def v2_logits_over_rest(
    host_port: str, x: np.ndarray, headers: dict[str, str], model: str = "classify"
) -> np.ndarray:
    """`model`'s logits for `x` through tritonclient.http (V2, binary tensor data) at
    HOST:PORT. tritonclient writes its own headers into the dict it is given: it gets a copy."""
    import tritonclient.http as thttp

    client = thttp.InferenceServerClient(url=host_port)
    try:
        tensor = thttp.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        return client.infer(model, [tensor], headers=dict(headers)).as_numpy("logits")
    finally:
        client.close()
