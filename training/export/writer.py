"""Write the served bundle from the variants that passed, then verify it as serving will."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle import Bundle, open_bundle, write_manifest
from shared.cache import FetchedModel
from shared.errors import BundleError
from shared.onnx import OnnxModel
from training.export.evaluate import Figures
from training.export.reference import bundle_reference

SAMPLE_INPUTS = "sample_inputs.npy"
REPORT = "report.md"
PLOT = "tradeoffs.png"


def variant_file(name: str) -> str:
    """The bundle's file name for a variant (fp32 keeps `model.onnx`)."""
    return "model.onnx" if name == "fp32" else f"model.{name}.onnx"


def write_bundle(
    out: Path,
    fetched: FetchedModel,
    name: str,
    figures: list[Figures],
    work: Path,
    sample: np.ndarray,
    default: str,
    export_info: dict[str, Any],
) -> dict[str, Any]:
    """Copy each passing variant, record its smoke-test outputs, write the manifest."""
    source = fetched.bundle
    np.save(out / SAMPLE_INPUTS, sample)
    variants: dict[str, Any] = {}
    for fig in figures:
        if not fig.in_bundle:
            continue
        file = variant_file(fig.name)
        shutil.copyfile(work / f"model.{fig.name}.onnx", out / file)
        model = OnnxModel(out / file, source.inputs, source.outputs, intra_op_threads=1)
        expected = f"expected_outputs.{fig.name}.npy"
        np.save(out / expected, model.run({"input": sample})[0])
        variants[fig.name] = {**fig.to_manifest(), "file": file, "expected_outputs": expected}
    shutil.copyfile(source.file(source.manifest["torch_weights"]), out / "weights.safetensors")
    files = {name: entry["file"] for name, entry in variants.items()}
    drift = bundle_reference(out, source, files)  # classify: what each variant made of val
    return write_manifest(
        out,
        {
            "task": source.task,
            "name": name,
            "source": {"model": fetched.name, "version": fetched.version, "run_id": fetched.run_id},
            "default_variant": default,
            "variants": variants,
            "sample_inputs": SAMPLE_INPUTS,
            "inputs": [s.to_dict() for s in source.inputs],
            "outputs": [s.to_dict() for s in source.outputs],
            "preprocessing": source.preprocessing,
            "labels": source.labels,
            "architecture": source.manifest["architecture"],
            "torch_weights": "weights.safetensors",
            "report": REPORT,
            "tradeoffs_plot": PLOT,
            "export": export_info,
            **({"drift": drift} if drift else {}),
        },
    )


def verify(out: Path) -> Bundle:
    """Open the bundle as a service would: checksums, then every variant's smoke test in ORT."""
    bundle = open_bundle(out)
    missing = [f for f in (REPORT, PLOT) if f not in bundle.manifest["files"]]
    if missing:
        raise BundleError(f"bundle is incomplete: {missing} missing")
    for variant in bundle.variants:
        OnnxModel.from_bundle(bundle, variant, intra_op_threads=1).smoke_test(bundle, variant)
    return bundle
