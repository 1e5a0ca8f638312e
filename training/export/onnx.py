"""Torch → ONNX with a dynamic batch axis, and the parity check against PyTorch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.bundle import TensorSpec
from shared.onnx import OnnxModel

PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class Parity:
    """How closely the ONNX model reproduces PyTorch on held-out inputs."""

    max_abs_diff: float
    top1_agreement: float
    samples: int

    @property
    def holds(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.top1_agreement == 1.0


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Export `model` with input `input`, output `logits` and a dynamic batch axis."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


@torch.no_grad()
def torch_logits(model: nn.Module, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    parts = [
        model(torch.from_numpy(inputs[i : i + batch_size])).numpy()
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(parts)


def onnx_logits(model: OnnxModel, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
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


def latency_ms(model: OnnxModel, one: np.ndarray, runs: int = 50) -> dict[str, float]:
    """p50/p99 of single-input inference after a few warm-up runs."""
    for _ in range(5):
        model.run({"input": one})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run({"input": one})
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def io_specs(
    channels: int, height: int, width: int, classes: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec("input", "float32", [-1, channels, height, width])],
        [TensorSpec("logits", "float32", [-1, classes])],
    )
