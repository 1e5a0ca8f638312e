"""Torch → ONNX with a dynamic batch axis, onnxruntime's offline optimization, and parity checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from shared.bundle import TensorSpec

PARITY_ATOL = 1e-4


class Runner(Protocol):
    """What the evaluation runs: an OnnxModel, or a PyTorch runtime behind the same call."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Parity:
    """How closely the ONNX model reproduces PyTorch on held-out inputs."""

    max_abs_diff: float
    top1_agreement: float
    samples: int

    @property
    def holds(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.top1_agreement == 1.0


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    optimize: bool = True,
    output_name: str = "logits",
) -> None:
    """Export `model` with input `input`, output `output_name` and a dynamic batch axis.

    With `optimize=False` the graph keeps one initializer per parameter, named by its
    state-dict key (onnxruntime's offline optimization folds BatchNorm and constants later).
    """
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=[output_name],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        optimize=optimize,
        verbose=False,
    )


def simplify(source: Path, target: Path) -> None:
    """onnxscript's optimizer (what `export(optimize=True)` runs): constants folded, BatchNorm
    folded into the convolutions, shape arithmetic removed. Quantizers need this clean graph."""
    import onnxscript.optimizer

    onnx.save(onnxscript.optimizer.optimize(onnx.load(str(source))), str(target))


def ort_optimize(source: Path, target: Path) -> str:
    """Apply onnxruntime's graph optimizations offline and save the result; returns the level.

    EXTENDED, not ALL: ALL adds layout transforms tied to this CPU (NCHWc), which a saved
    model must not carry to another machine; serving applies them itself at load time.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.intra_op_num_threads = 1
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    return "extended"


def with_weights(source: Path, target: Path, state: dict[str, torch.Tensor]) -> int:
    """Copy an unoptimized export, replacing initializers by state-dict key; returns how many.

    A model with the same architecture but other weights (the sparsity study) needs no new
    trace this way; a shape mismatch or an initializer left unreplaced raises.
    """
    model = onnx.load(str(source))
    replaced = 0
    for init in model.graph.initializer:
        if init.name in state:
            array = state[init.name].detach().cpu().numpy()
            if tuple(array.shape) != tuple(init.dims):
                raise ValueError(f"{init.name}: shape {array.shape} != exported {list(init.dims)}")
            init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), init.name))
            replaced += 1
    float_params = {k for k, v in state.items() if v.is_floating_point() and v.dim() > 0}
    names = {init.name for init in model.graph.initializer}
    if not float_params <= names:
        missing = sorted(float_params - names)[:5]
        raise ValueError(f"the export has no initializers for {missing}; was it optimized?")
    onnx.save(model, str(target))
    return replaced


@torch.no_grad()
def torch_logits(model: nn.Module, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    parts = [
        model(torch.from_numpy(inputs[i : i + batch_size])).numpy()
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(parts)


def onnx_logits(model: Runner, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    parts = [
        model.run({"input": inputs[i : i + batch_size]})[0]
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(parts)


def parity(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    return Parity(
        max_abs_diff=float(np.max(np.abs(reference - candidate))),
        top1_agreement=float(np.mean(reference.argmax(1) == candidate.argmax(1))),
        samples=len(reference),
    )


def io_specs(
    channels: int, height: int, width: int, classes: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec("input", "float32", [-1, channels, height, width])],
        [TensorSpec("logits", "float32", [-1, classes])],
    )
