"""onnxruntime sessions with explicit threads, and input checks against the bundle's specs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle import Bundle, TensorSpec
from shared.errors import BundleError, InvalidInputError

log = logging.getLogger("modelplane.onnx")

# Parity tolerance of the load-time smoke test (sample inputs → expected outputs). Exported
# fp32 models match to ~1e-5; quantized variants are checked on top-1 agreement instead.
SMOKE_ATOL = 1e-3


def session_options(threads: int) -> Any:
    """onnxruntime options of every serving session: `threads` intra-op threads, one inter-op,
    sequential, all graph optimizations, and idle intra-op threads that sleep instead of
    spinning: spinning workers burn the cores the event loop and the preprocessing threads
    need. Measured on classify fp32 (2 cores, wrk, alternating runs): with one core busy
    elsewhere, concurrency 1 p50 23.4 -> 12.8-14.7 ms and concurrency 32 100 -> 119-160
    req/s; on the idle machine the two settings were within noise of each other."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxModel:
    """One onnxruntime session and the tensor specs it was exported with."""

    def __init__(
        self, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], intra_op_threads: int
    ) -> None:
        import onnxruntime as ort

        options = session_options(intra_op_threads)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise BundleError(f"onnxruntime could not load {path.name}: {exc}") from exc
        self.inputs = inputs
        self.outputs = outputs
        self.intra_op_threads = intra_op_threads
        names = {i.name for i in self.session.get_inputs()}
        missing = {spec.name for spec in inputs} - names
        if missing:
            raise BundleError(f"{path.name} lacks inputs named in the manifest: {sorted(missing)}")

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str, intra_op_threads: int) -> OnnxModel:
        return cls(bundle.variant_file(variant), bundle.inputs, bundle.outputs, intra_op_threads)

    def check(self, name: str, array: np.ndarray) -> None:
        """Raise InvalidInputError unless `array` fits the spec of input `name` (batch included)."""
        spec = next((s for s in self.inputs if s.name == name), None)
        if spec is None:
            raise InvalidInputError(f"unknown input {name!r}")
        if array.dtype != np.dtype(spec.dtype):
            raise InvalidInputError(f"input {name!r} must be {spec.dtype}, got {array.dtype}")
        if array.ndim != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
        ):
            raise InvalidInputError(
                f"input {name!r} must have shape {spec.shape} (-1 = any), got {list(array.shape)}"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, array in feeds.items():
            self.check(name, array)
        return self.session.run(None, feeds)

    def smoke_test(self, bundle: Bundle, variant: str) -> float:
        """Run the bundle's sample inputs; outputs must match what the export recorded.

        Returns the max abs difference. The expected outputs were produced by onnxruntime from
        this very file at export time, so anything beyond float noise means a broken model.
        """
        sample = bundle.load_array(bundle.manifest["sample_inputs"])
        expected = bundle.load_array(bundle.variants[variant]["expected_outputs"])
        got = self.run({self.inputs[0].name: sample})[0]
        if got.shape != expected.shape:
            raise BundleError(f"smoke test: output shape {got.shape} != expected {expected.shape}")
        diff = float(np.max(np.abs(got - expected)))
        if diff > SMOKE_ATOL or not np.array_equal(got.argmax(-1), expected.argmax(-1)):
            raise BundleError(
                f"smoke test failed for variant {variant!r}: max abs diff {diff:.2e} "
                f"(tolerance {SMOKE_ATOL:.0e}) on the bundle's sample inputs"
            )
        log.info("smoke test passed: max abs diff %.2e on %d samples", diff, len(sample))
        return diff
