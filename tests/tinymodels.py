"""Tiny ONNX classify bundles built by the tests themselves (no training, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.bundle import write_manifest
from shared.media import ImageSpec

SPEC = ImageSpec(8, 8, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LABELS = [str(i) for i in range(10)]


def tiny_classifier(seed: int = 0) -> onnx.ModelProto:
    """Flatten → MatMul → Add: a linear classifier over (N, 3, 8, 8) with a dynamic batch."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.1, size=(3 * 8 * 8, len(LABELS))).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(len(LABELS),)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["mm"]),
            helper.make_node("Add", ["mm", "bias"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def linear_logits(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    """The reference answer of `tiny_classifier`, computed with numpy."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return batch.reshape(len(batch), -1) @ inits["weight"] + inits["bias"]


def write_tiny_bundle(directory: Path, name: str = "classify", seed: int = 0) -> Path:
    """A complete, checksummed classify bundle with one fp32 variant."""
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_classifier(seed)
    onnx.save(model, directory / "model.onnx")
    rng = np.random.default_rng(seed + 1)
    sample = rng.normal(0, 1, size=(4, 3, 8, 8)).astype(np.float32)
    np.save(directory / "sample_inputs.npy", sample)
    np.save(
        directory / "expected_outputs.fp32.npy", linear_logits(model, sample).astype(np.float32)
    )
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
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, len(LABELS)]}],
            "preprocessing": SPEC.to_manifest(),
            "labels": LABELS,
            "source": {"model": f"{name}-torch", "version": "1", "run_id": "test"},
        },
    )
    return directory


def seed_cache(
    cache_dir: Path,
    name: str = "classify",
    version: str = "1",
    alias: str = "production",
    seed: int = 0,
) -> Path:
    """Place a verified bundle in a model cache as if it had been downloaded before."""
    bundle_dir = write_tiny_bundle(cache_dir / name / version, name=name, seed=seed)
    (cache_dir / name / "aliases.json").write_text(json.dumps({alias: version}))
    return bundle_dir
