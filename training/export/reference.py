"""The drift reference a bundle carries: what each variant made of held-out data.

For each bundled variant, `drift.<variant>.npy` holds one row of features per held-out item
(shared/drift.py: input mean and std, top-1 score and logits for classifiers; the embedding for
encoders), float32, listed and checksummed in the manifest like every bundle file, read with
allow_pickle=False. Classify uses the validation split: the test split stays for the export's
own figures and for the drift tests' clean traffic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle import Bundle, TensorSpec, read_manifest, write_manifest
from shared.drift import FEATURE_SETS
from shared.media import ImageSpec
from shared.onnx import OnnxModel

KINDS = {"classify": "classifier/1", "similarity": "embedding/1"}
_GENERATED = ("format", "created", "files")  # what write_manifest fills in itself


def digits_reference(source: Bundle) -> tuple[np.ndarray, str]:
    """The validation digits, preprocessed as serving does, for a digit model's bundle."""
    from training import data as digits

    spec = ImageSpec.from_manifest(source.preprocessing)
    val = digits.load_splits(source.preprocessing.get("classes"))["val"]
    return digits.preprocess(val.images, spec), f"validation split, {len(val.labels)} digits"


def write_reference(
    out: Path,
    kind: str,
    inputs: np.ndarray,
    variants: dict[str, str],
    specs: tuple[list[TensorSpec], list[TensorSpec]],
    source: str,
) -> dict[str, Any]:
    """Run each variant's ONNX file (relative to `out`) on `inputs`, save its feature rows,
    and return the manifest's `drift` entry."""
    compute = FEATURE_SETS[kind].compute
    files = {}
    for name, file in variants.items():
        model = OnnxModel(out / file, specs[0], specs[1], intra_op_threads=1)
        feed = specs[0][0].name
        outputs = np.concatenate(
            [model.run({feed: inputs[i : i + 128]})[0] for i in range(0, len(inputs), 128)]
        )
        files[name] = f"drift.{name}.npy"
        np.save(out / files[name], compute(inputs, outputs))
    return {
        "features": kind,
        "files": files,
        "items": len(inputs),
        "source": source,
        "tests": "KS per column (Bonferroni); chi-square on predicted classes (classifiers)",
    }


def bundle_reference(out: Path, source: Bundle, variants: dict[str, str]) -> dict[str, Any] | None:
    """The drift entry of a bundle being written from `source` (None: no reference for its
    task)."""
    kind = KINDS.get(source.task)
    if kind is None:
        return None
    inputs, described = digits_reference(source)
    return write_reference(out, kind, inputs, variants, (source.inputs, source.outputs), described)


def add_reference(directory: Path, kind: str, inputs: np.ndarray, source: str) -> dict[str, Any]:
    """Give an existing bundle a drift reference (every variant) and rewrite its manifest."""
    manifest = read_manifest(directory)
    bundle = Bundle(directory, manifest)
    variants = {name: entry["file"] for name, entry in bundle.variants.items()}
    entry = write_reference(
        directory, kind, inputs, variants, (bundle.inputs, bundle.outputs), source
    )
    kept = {key: value for key, value in manifest.items() if key not in _GENERATED}
    return write_manifest(directory, {**kept, "drift": entry})
