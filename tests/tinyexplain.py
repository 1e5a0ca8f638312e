"""A tiny DenseNet whose class depends on one region, trained by the tests, as a bundle.

Class 1 means a bright 4x4 square somewhere in the top-left quadrant; every image also has two
3x3 distractor squares elsewhere. A faithful explanation of class 1 points at the top-left.
"""

from __future__ import annotations

import base64
import copy
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from torch import nn

from models.classify import architecture_config, build_model, write_torch_bundle
from services.explain.service import ExplainService
from shared.app import create_app
from shared.bundle import read_manifest, write_manifest
from shared.media import ImageSpec, gray_to_image, image_to_array
from shared.settings import ServingSettings
from tests.unit.conftest import DEAD_REGISTRY, png_bytes, wait_ready

SIZE = 16
SPEC = ImageSpec(SIZE, SIZE, 1, (0.5,), (0.5,))
LABELS = ["empty", "square"]


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 16, 16) images and labels: 1 iff a 4x4 square lies in the top-left quadrant."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE), np.uint8)
    labels = rng.integers(0, 2, n)
    for image, label in zip(images, labels, strict=True):
        for _ in range(2):
            row, col = rng.integers(0, SIZE - 3, 2)
            while row < 7 and col < 7:
                row, col = rng.integers(0, SIZE - 3, 2)
            image[row : row + 3, col : col + 3] = 255
        if label:
            row, col = rng.integers(1, 4, 2)
            image[row : row + 4, col : col + 4] = 255
    return images, labels


def prep(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([image_to_array(gray_to_image(i), SPEC) for i in images]))


ARCH = architecture_config(
    "densenet", 2, in_channels=1, growth_rate=4, block_config=[2, 2], num_init_features=8, bn_size=2
)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny nets run fastest on one thread (the service is set to one too); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@cache
def trained_region_model() -> nn.Module:
    """Train until the held-out accuracy is at least 98% (seconds, on one thread)."""
    with one_torch_thread():
        return _train()


def _train() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ARCH)
    x, y = prep(synthetic(512, 0)[0]), torch.from_numpy(synthetic(512, 0)[1])
    held_images, held_labels = synthetic(200, 1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(10):
        model.train()
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(prep(held_images)).argmax(1).numpy() == held_labels).mean()
        if accuracy >= 0.98:
            return model
    raise AssertionError(f"the synthetic model did not learn its task: accuracy {accuracy:.2f}")


def write_region_bundle(directory: Path) -> None:
    """The `region` model's torch bundle (safetensors weights, architecture, labels)."""
    write_torch_bundle(
        directory,
        trained_region_model(),
        name="region",
        architecture=ARCH,
        spec=SPEC,
        classes=[0, 1],
        labels=LABELS,
        source={"run_id": "test"},
        metrics={},
    )


def write_region_cache(cache_dir: Path, fp32: str = "outputs") -> Path:
    """A verified `region` bundle in a model cache, as if downloaded before: the torch weights
    plus, as the export stage writes them, an fp32 ONNX variant and sample inputs, with its
    expected outputs (`fp32="outputs"`), without them (`"onnx"`), or no fp32 variant (`""`)."""
    bundle_dir = cache_dir / "region" / "1"
    bundle_dir.mkdir(parents=True)
    write_region_bundle(bundle_dir)
    if fp32:
        add_fp32_export(bundle_dir, with_outputs=fp32 == "outputs")
    (cache_dir / "region" / "aliases.json").write_text(json.dumps({"production": "1"}))
    return bundle_dir


def add_fp32_export(bundle_dir: Path, with_outputs: bool) -> None:
    """model.onnx (the legacy exporter: a quarter of a second), sample_inputs.npy and, with
    `with_outputs`, onnxruntime's logits on them; the manifest rewritten to list them."""
    import onnxruntime as ort

    sample = prep(synthetic(4, 5)[0]).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(trained_region_model()).eval(),
            (torch.from_numpy(sample),),
            str(bundle_dir / "model.onnx"),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    np.save(bundle_dir / "sample_inputs.npy", sample)
    manifest = read_manifest(bundle_dir)
    manifest["sample_inputs"] = "sample_inputs.npy"
    manifest["variants"]["fp32"] = {"file": "model.onnx"}
    if with_outputs:
        session = ort.InferenceSession(
            bundle_dir / "model.onnx", providers=["CPUExecutionProvider"]
        )
        np.save(bundle_dir / "expected_outputs.fp32.npy", session.run(None, {"input": sample})[0])
        manifest["variants"]["fp32"]["expected_outputs"] = "expected_outputs.fp32.npy"
    write_manifest(bundle_dir, {k: v for k, v in manifest.items() if k != "files"})


def b64(image: np.ndarray) -> str:
    """A uint8 image as base64 PNG, the way clients send it."""
    return base64.b64encode(png_bytes(image)).decode()


def positives(n: int = 8) -> np.ndarray:
    """Held-out class-1 images (the square is in the deciding quadrant)."""
    images, labels = synthetic(64, 2)
    return images[labels == 1][:n]


@contextmanager
def explain_client(cache_dir: Path) -> Iterator[TestClient]:
    """A fresh explain app serving the `region` model from `cache_dir`, once ready."""
    with TestClient(create_app(ExplainService, region_settings(cache_dir))) as client:
        wait_ready(client)
        yield client


def region_settings(cache_dir: Path, uri: str = "models:/region@production") -> ServingSettings:
    return ServingSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_uri=uri,
        model_cache_dir=cache_dir,
        onnx_intra_op_threads=1,
        max_batch_size=1,
        max_body_bytes=256 * 1024,
        max_image_pixels=256 * 256,
        log_json=False,
    )
