"""The drift reference a bundle carries: what each variant made of held-out data.

For each bundled variant, `drift.<variant>.npy` holds one row of features per held-out item
(shared/drift.py: input mean and std, top-1 score and logits for classifiers; the embedding for
encoders; token statistics, score and logits for the text classifier), float32, listed and
checksummed in the manifest like every bundle file, read with allow_pickle=False. Classify and
text-classify use the validation split: the test split stays for the export's own figures and
for the drift tests' clean traffic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle import Bundle, TensorSpec, read_manifest, write_manifest
from shared.drift import FEATURE_SETS
from shared.media import ImageSpec
from shared.onnx import OnnxModel

KINDS = {
    "classify": "classifier/1",
    "similarity": "embedding/1",
    "text-classify": "text-classifier/1",
}
_GENERATED = ("format", "created", "files")  # what write_manifest fills in itself
TEXT_PER_LANGUAGE = 40  # validation sentences per language in a text reference
TESTS = "KS per column (Bonferroni); chi-square on predicted classes (classifiers); MMD on outputs"
Inputs = np.ndarray | list[list[int]]  # image tensors, or token ids of texts (ragged)


def digits_reference(source: Bundle) -> tuple[np.ndarray, str]:
    """The validation digits, preprocessed as serving does, for a digit model's bundle."""
    from training import data as digits

    spec = ImageSpec.from_manifest(source.preprocessing)
    val = digits.load_splits(source.preprocessing.get("classes"))["val"]
    return digits.preprocess(val.images, spec), f"validation split, {len(val.labels)} digits"


def text_reference(source: Bundle) -> tuple[list[list[int]], str]:
    """Validation sentences as the service tokenizes them (longer than the model takes: left
    out, as serving refuses them)."""
    from tokenizers import Tokenizer

    from training import text_data

    tokenizer = Tokenizer.from_file(str(source.file("tokenizer.json")))
    limit = int(source.preprocessing["max_len"])
    texts = text_data.language_split("val", TEXT_PER_LANGUAGE).texts
    rows = [e.ids for e in tokenizer.encode_batch(texts) if 0 < len(e.ids) <= limit]
    return rows, f"validation split, {len(rows)} sentences"


def _batch(inputs: Inputs, start: int, stop: int) -> np.ndarray:
    """Rows `start:stop` as the model's input (token ids right-padded with 0, as served)."""
    if isinstance(inputs, np.ndarray):
        return inputs[start:stop]
    rows = inputs[start:stop]
    batch = np.zeros((len(rows), max(len(ids) for ids in rows)), dtype=np.int64)
    for index, ids in enumerate(rows):
        batch[index, : len(ids)] = ids
    return batch


def write_reference(
    out: Path,
    kind: str,
    inputs: Inputs,
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
            [model.run({feed: _batch(inputs, i, i + 128)})[0] for i in range(0, len(inputs), 128)]
        )
        files[name] = f"drift.{name}.npy"
        np.save(out / files[name], compute(inputs, outputs))
    return {
        "features": kind,
        "files": files,
        "items": len(inputs),
        "source": source,
        "tests": TESTS,
    }


def bundle_reference(out: Path, source: Bundle, variants: dict[str, str]) -> dict[str, Any] | None:
    """The drift entry of a bundle being written from `source` (None: no reference for its
    task)."""
    kind = KINDS.get(source.task)
    if kind is None:
        return None
    inputs: Inputs
    inputs, described = (
        text_reference(source) if kind == "text-classifier/1" else digits_reference(source)
    )
    return write_reference(out, kind, inputs, variants, (source.inputs, source.outputs), described)


def add_reference(directory: Path, kind: str, inputs: Inputs, source: str) -> dict[str, Any]:
    """Give an existing bundle a drift reference (every variant) and rewrite its manifest."""
    manifest = read_manifest(directory)
    bundle = Bundle(directory, manifest)
    variants = {name: entry["file"] for name, entry in bundle.variants.items()}
    entry = write_reference(
        directory, kind, inputs, variants, (bundle.inputs, bundle.outputs), source
    )
    kept = {key: value for key, value in manifest.items() if key not in _GENERATED}
    return write_manifest(directory, {**kept, "drift": entry})
