"""The load-time check that explain's torch weights are the served model's: their logits on
the bundle's sample inputs must match the fp32 ONNX export's to 1e-3."""

from __future__ import annotations

import numpy as np

from shared.bundle import Bundle
from shared.errors import BundleError
from shared.onnx import OnnxModel


def parity_reference(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """(sample inputs, fp32 logits) that the torch weights must reproduce: the export's stored
    outputs, or, when it stored none, the fp32 ONNX model's run on the samples. A bundle with
    neither is refused: explaining weights nobody checked would explain another model."""
    fp32 = bundle.variants.get("fp32")
    if fp32 is None or "sample_inputs" not in bundle.manifest:
        raise BundleError(
            f"{bundle.name} has no fp32 export with sample inputs, so its torch weights cannot "
            "be checked against the served model; serve the exported bundle "
            "(python -m training.export classify), not the <task>-torch one"
        )
    sample = bundle.load_array(bundle.manifest["sample_inputs"])
    if "expected_outputs" in fp32:
        return sample, bundle.load_array(fp32["expected_outputs"])
    if not str(fp32["file"]).endswith(".onnx"):
        raise BundleError(
            f"{bundle.name}'s fp32 variant has neither expected outputs nor an ONNX file: the "
            "torch weights cannot be checked against it"
        )
    model = OnnxModel.from_bundle(bundle, "fp32", intra_op_threads=1)
    return sample, model.run({model.inputs[0].name: sample})[0]
