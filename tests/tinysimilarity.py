"""A tiny similarity bundle built by the tests: a random-projection ONNX encoder and a gallery.

The encoder is Flatten → MatMul → LpNormalization over (N, 1, 8, 8) digits, so numpy computes
the reference embeddings exactly. The gallery holds real training digits, embedded by numpy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from services.similarity.service import SimilarityService
from shared.app import create_app
from shared.bundle import write_manifest
from shared.media import ImageSpec
from shared.settings import ServingSettings
from tests.unit.conftest import DEAD_REGISTRY, wait_ready
from training.data import load_splits, preprocess

SPEC = ImageSpec(8, 8, 1, (0.5,), (0.5,))
DIM = 16
THRESHOLD = 0.75


def projection(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.2, size=(64, DIM)).astype(np.float32)


def tiny_encoder(seed: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["raw"]),
            helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
        ],
        "tiny-encoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[numpy_helper.from_array(projection(seed), "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def reference_embeddings(inputs: np.ndarray, seed: int = 0) -> np.ndarray:
    """What the tiny encoder computes, in numpy."""
    raw = inputs.reshape(len(inputs), 64) @ projection(seed)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def gallery_digits(size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """The first `size` training digits: uint8 images, ids `train-<index>`, labels."""
    train = load_splits()["train"]
    ids = [f"train-{i}" for i in train.indices[:size]]
    return train.images[:size], ids, [str(y) for y in train.labels[:size]]


def write_bundle(
    directory: Path, *, gallery_size: int = 40, seed: int = 0, source_version: str = "1"
) -> Path:
    """A complete, checksummed similarity bundle with one fp32 variant and its gallery."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_encoder(seed), directory / "model.onnx")
    sample = preprocess(load_splits()["test"].images[:4], SPEC)
    np.save(directory / "sample_inputs.npy", sample)
    np.save(directory / "expected_outputs.fp32.npy", reference_embeddings(sample, seed))
    images, ids, labels = gallery_digits(gallery_size)
    embedded = reference_embeddings(preprocess(images, SPEC), seed).astype(np.float32)
    np.save(directory / "gallery.fp32.npy", embedded.reshape(len(images), DIM))
    (directory / "gallery.json").write_text(json.dumps({"ids": ids, "labels": labels}))
    write_manifest(
        directory,
        {
            "task": "similarity",
            "name": "similarity",
            "default_variant": "fp32",
            "variants": {
                "fp32": {
                    "file": "model.onnx",
                    "expected_outputs": "expected_outputs.fp32.npy",
                    "gallery_embeddings": "gallery.fp32.npy",
                    "threshold": THRESHOLD,
                }
            },
            "sample_inputs": "sample_inputs.npy",
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
            "outputs": [{"name": "embedding", "dtype": "float32", "shape": [-1, DIM]}],
            "preprocessing": SPEC.to_manifest(),
            "labels": [str(i) for i in range(10)],
            "threshold": THRESHOLD,
            "gallery": {"items": "gallery.json", "size": gallery_size, "index": "flat"},
            "source": {"model": "similarity-torch", "version": source_version, "run_id": "test"},
        },
    )
    return directory


def seed_cache(cache_dir: Path, version: str = "1", **bundle: object) -> Path:
    """Place a verified similarity bundle in a model cache as `similarity@production`."""
    bundle_dir = write_bundle(cache_dir / "similarity" / version, **bundle)  # type: ignore[arg-type]
    (cache_dir / "similarity" / "aliases.json").write_text(json.dumps({"production": version}))
    return bundle_dir


def settings_for(cache_dir: Path, **overrides: object) -> ServingSettings:
    return ServingSettings(  # type: ignore[call-arg]
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=cache_dir,
        onnx_intra_op_threads=1,
        max_body_bytes=256 * 1024,
        max_image_pixels=256 * 256,
        log_json=False,
        **overrides,
    )


@contextmanager
def serving(cache_dir: Path, **overrides: object) -> Iterator[TestClient]:
    """An in-process similarity app over the cached bundle, ready."""
    app = create_app(SimilarityService(), settings_for(cache_dir, **overrides))
    with TestClient(app) as client:
        wait_ready(client)
        yield client
