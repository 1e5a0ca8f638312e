"""The `similarity` bundle on disk: per-variant encoders, smoke arrays and galleries.

Each bundled variant carries `model[.<variant>].onnx`, `expected_outputs.<variant>.npy` (its
output on `sample_inputs.npy`, for the load-time smoke test) and `gallery.<variant>.npy` (the
reference set embedded by that very variant, float32, read with allow_pickle=False); the ids and
labels of the gallery rows are `gallery.json`. The FAISS index is not serialized: the service
rebuilds it from the checksummed embeddings (see services/similarity/gallery.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle import Bundle, open_bundle, write_manifest
from shared.cache import FetchedModel
from shared.errors import BundleError
from shared.onnx import OnnxModel
from training.export.reference import write_reference

GALLERY_ITEMS = "gallery.json"
SAMPLE_INPUTS = "sample_inputs.npy"
SMOKE_SAMPLES = 8


@dataclass
class HeldOut:
    """Preprocessed inputs and labels of every split, plus the gallery's rows."""

    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    gallery_rows: np.ndarray
    gallery_ids: list[str]
    gallery_labels: list[str]


@dataclass
class Variant:
    """One exported encoder and what it measured."""

    name: str
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.0
    gallery: np.ndarray | None = None
    gate: str = ""


def run_encoder(variant: Variant, bundle: Bundle, inputs: np.ndarray, threads: int) -> np.ndarray:
    """Embeddings from onnxruntime, in batches."""
    from training.export.onnx import onnx_logits

    model = OnnxModel(variant.path, bundle.inputs, bundle.outputs, threads or 1)
    return onnx_logits(model, inputs)


def write_bundle(
    out: Path,
    fetched: FetchedModel,
    args: argparse.Namespace,
    variants: list[Variant],
    data: HeldOut,
) -> Bundle:
    """Variant files, smoke arrays, per-variant galleries, ids/labels, weights, manifest."""
    source = fetched.bundle
    sample = data.inputs["test"][:SMOKE_SAMPLES]
    np.save(out / SAMPLE_INPUTS, sample)
    entries: dict[str, Any] = {}
    for v in variants:
        if v.gate:
            continue
        file = "model.onnx" if v.name == "fp32" else f"model.{v.name}.onnx"
        shutil.copyfile(v.path, out / file)
        np.save(out / f"expected_outputs.{v.name}.npy", run_encoder(v, source, sample, 1))
        np.save(out / f"gallery.{v.name}.npy", np.ascontiguousarray(v.gallery, dtype=np.float32))
        entries[v.name] = {
            "file": file,
            "expected_outputs": f"expected_outputs.{v.name}.npy",
            "gallery_embeddings": f"gallery.{v.name}.npy",
            "threshold": v.threshold,
            **{k: float(x) for k, x in v.metrics.items()},
        }
    items = {"ids": data.gallery_ids, "labels": data.gallery_labels}
    (out / GALLERY_ITEMS).write_text(json.dumps(items) + "\n")
    shutil.copyfile(source.file(source.manifest["torch_weights"]), out / "weights.safetensors")
    files = {name: entry["file"] for name, entry in entries.items()}
    val = data.inputs["val"]  # what each variant made of held-out digits: the drift reference
    specs = (source.inputs, source.outputs)
    drift = write_reference(out, "embedding/1", val, files, specs, f"validation split, {len(val)}")
    write_manifest(
        out,
        {
            "task": "similarity",
            "name": args.name,
            "source": {"model": fetched.name, "version": fetched.version, "run_id": fetched.run_id},
            "default_variant": "fp32",
            "variants": entries,
            "sample_inputs": SAMPLE_INPUTS,
            "inputs": [s.to_dict() for s in source.inputs],
            "outputs": [s.to_dict() for s in source.outputs],
            "preprocessing": source.preprocessing,
            "labels": source.labels,
            "architecture": source.manifest["architecture"],
            "torch_weights": "weights.safetensors",
            "threshold": entries["fp32"]["threshold"],
            "training": source.manifest.get("training", {}),
            "gallery": {
                "items": GALLERY_ITEMS,
                "source": args.gallery,
                "size": len(data.gallery_ids),
                "index": args.index,
                "hnsw_m": args.hnsw_m,
            },
            "drift": drift,
        },
    )
    return verify(out)


def verify(out: Path) -> Bundle:
    """Open the bundle as the service will: checksums, smoke tests, gallery shapes."""
    bundle = open_bundle(out)
    items = json.loads(bundle.file(GALLERY_ITEMS).read_text())
    for name, entry in bundle.variants.items():
        OnnxModel.from_bundle(bundle, name, intra_op_threads=1).smoke_test(bundle, name)
        gallery = bundle.load_array(entry["gallery_embeddings"])
        if gallery.shape != (len(items["ids"]), bundle.outputs[0].shape[1]):
            raise BundleError(f"gallery of {name} has shape {gallery.shape}")
    return bundle
