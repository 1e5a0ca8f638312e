"""Server CPU per request, and the overhead-bound model `make bench-serve` measures it on.

CPU time is read from /proc/<pid>/stat (utime + stime, every thread) for every process of the
server's process trees (a server and its workers: LitServe's inference process, a
supervisor's service processes), before and after a wrk run; divided by the requests wrk
completed. Subtracting the model's own CPU per item, measured raw in this process, leaves
the cost of serving: HTTP, routing, decoding, batching, thread hand-offs, JSON, metrics and logs.

The tiny model is a linear classifier over 3x8x8 (Flatten, MatMul, Add): a few microseconds of
inference, so nearly all of a request's CPU is the server's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TINY_LABELS = [str(i) for i in range(10)]


def _stats() -> list[tuple[int, list[str]]]:
    """(pid, /proc/<pid>/stat fields after "pid (comm) ") of every live process."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        found.append((int(entry.name), stat[stat.rindex(")") + 2 :].split()))
    return found


def tree_pids(roots: set[int]) -> list[int]:
    """The live processes `roots` and every process they started, at any depth (a
    supervisor's children run in sessions of their own, so process groups would miss them)."""
    stats = _stats()
    parents = {pid: int(fields[1]) for pid, fields in stats}  # fields[1]: ppid
    found = {pid for pid in parents if pid in roots}
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def tree_cpu_s(roots: set[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes of `tree_pids(roots)`."""
    tree = set(tree_pids(roots))
    ticks = sum(
        int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
        for pid, fields in _stats()
        if pid in tree
    )
    return ticks / CLOCK_TICKS


def model_cpu_per_item_s(bundle_dir: Path, variant: str, threads: int, batch: int) -> float:
    """The model's own CPU seconds per item at `batch`, run raw in this process."""
    from shared.bundle import open_bundle
    from shared.onnx import OnnxModel

    bundle = open_bundle(bundle_dir)
    model = OnnxModel.from_bundle(bundle, variant, threads)
    sample = bundle.load_array(bundle.manifest["sample_inputs"])
    x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])))
    for _ in range(5):
        model.session.run(None, {"input": x})
    runs = 0
    cpu0, deadline = time.process_time(), time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        model.session.run(None, {"input": x})
        runs += 1
    return (time.process_time() - cpu0) / (runs * batch)


def write_tiny_bundle(cache_dir: Path, name: str = "classify", version: str = "1") -> Path:
    """A verified classify bundle of the tiny linear model in `cache_dir`, aliased
    `production`, as if downloaded before (served with the registry unreachable)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from shared.bundle import write_manifest
    from shared.media import ImageSpec

    directory = cache_dir / name / version
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.1, size=(3 * 8 * 8, len(TINY_LABELS))).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(len(TINY_LABELS),)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["mm"]),
            helper.make_node("Add", ["mm", "bias"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, directory / "model.onnx")
    sample = rng.normal(0, 1, size=(4, 3, 8, 8)).astype(np.float32)
    np.save(directory / "sample_inputs.npy", sample)
    np.save(directory / "expected_outputs.fp32.npy", sample.reshape(4, -1) @ weight + bias)
    write_manifest(
        directory,
        {
            "task": "classify",
            "name": name,
            "default_variant": "fp32",
            "variants": {
                "fp32": {"file": "model.onnx", "expected_outputs": "expected_outputs.fp32.npy"}
            },
            "sample_inputs": "sample_inputs.npy",
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, 8, 8]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
            "preprocessing": ImageSpec(8, 8, 3, (0.5,) * 3, (0.5,) * 3).to_manifest(),
            "labels": TINY_LABELS,
            "source": {"model": f"{name}-torch", "version": version, "run_id": "bench"},
        },
    )
    (cache_dir / name / "aliases.json").write_text(json.dumps({"production": version}))
    return directory
