"""Tiny ONNX classify bundles built by the tests themselves (no training, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.bundle import write_manifest
from shared.media import ImageSpec, decode_image, encode_png, gray_to_image, image_to_array

SPEC = ImageSpec(8, 8, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LABELS = [str(i) for i in range(10)]


def digit_png(index: int) -> tuple[bytes, int]:
    """Held-out digit `index` of scikit-learn's bundled digits as a PNG, and its true label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    row = len(digits.images) - 1 - index  # from the end: `fitted_weights` trains on the start
    return encode_png(gray_to_image(digits.images[row])), int(digits.target[row])


def fitted_weights(train: int = 1200, shuffled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a ridge-regression digit classifier over what the service feeds the
    model (PNG → decoded → normalized 3x8x8), fitted on the first `train` digits in
    milliseconds: it classifies held-out digits right (~95%), unlike random weights (~10%).
    `shuffled`: fitted to permuted labels, so it learns nothing that holds on held-out digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = np.stack(
        [
            image_to_array(decode_image(encode_png(gray_to_image(px)), 64), SPEC).reshape(-1)
            for px in digits.images[:train]
        ]
    )
    design = np.hstack([features, np.ones((train, 1), np.float32)])
    labels = digits.target[:train]
    if shuffled:
        labels = np.random.default_rng(0).permutation(labels)
    targets = np.eye(len(LABELS), dtype=np.float32)[labels]
    solution = np.linalg.solve(design.T @ design + np.eye(design.shape[1]), design.T @ targets)
    return solution[:-1].astype(np.float32), solution[-1].astype(np.float32)


def tiny_classifier(
    seed: int = 0, fitted: bool = False, train: int = 1200, shuffled: bool = False
) -> onnx.ModelProto:
    """Flatten → MatMul → Add: a linear classifier over (N, 3, 8, 8) with a dynamic batch;
    random weights, or with `fitted` the ridge-regression digit classifier (`fitted_weights`
    of `train` digits, `shuffled` labels)."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.1, size=(3 * 8 * 8, len(LABELS))).astype(np.float32)
    bias = rng.normal(0, 0.1, size=(len(LABELS),)).astype(np.float32)
    if fitted:
        weight, bias = fitted_weights(train, shuffled)
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


def write_tiny_bundle(
    directory: Path,
    name: str = "classify",
    seed: int = 0,
    fitted: bool = False,
    model: onnx.ModelProto | None = None,
) -> Path:
    """A complete, checksummed classify bundle with one fp32 variant (`tiny_classifier`, or
    `model`: a graph whose logits `linear_logits` computes)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else tiny_classifier(seed, fitted)
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
    fitted: bool = False,
) -> Path:
    """Place a verified bundle in a model cache as if it had been downloaded before."""
    bundle_dir = write_tiny_bundle(cache_dir / name / version, name=name, seed=seed, fitted=fitted)
    (cache_dir / name / "aliases.json").write_text(json.dumps({alias: version}))
    return bundle_dir
