"""int8 variants: onnxruntime dynamic and static (QDQ) quantization, and QAT.

Static quantization stores int8 weights (per output channel, symmetric) and uint8 activations
with scales calibrated on training images that a `CalibrationDataReader` feeds in batches;
onnxruntime fuses the QDQ pairs into int8 kernels when it loads the model. QAT fine-tunes the
network with BatchNorm folded into the convolutions and every conv/linear weight and input
fake-quantized (`torch.ao.quantization.FakeQuantize` for activations, the same symmetric
per-channel grid onnxruntime uses for weights), then goes through the same QDQ path with the
activation ranges the QAT observers learned.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
from torch.nn.utils import parametrize

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
WEIGHT_QMAX = 127  # onnxruntime's symmetric int8 weights use [-127, 127]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images to onnxruntime's calibrator, `batch_size` at a time."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 32, input_name: str = "input") -> None:
        if len(inputs) == 0:
            raise ValueError("calibration needs at least one image")
        self.inputs = inputs
        self.batch_size = batch_size
        self.input_name = input_name
        self._batches: Iterator[dict[str, np.ndarray]] = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.inputs), self.batch_size):
            yield {self.input_name: self.inputs[start : start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def prepare_for_quantization(source: Path, target: Path) -> None:
    """onnxruntime's recommended pre-processing: shape inference and basic graph optimization."""
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


def stem_nodes(model_path: Path) -> list[str]:
    """Names of the nodes that read a graph input directly (the stem convolution).

    The stem sees the raw normalized pixels through only a few input channels; quantizing its
    input and weights costs far more accuracy than any other layer for a small speed-up.
    """
    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    return [
        n.name
        for n in graph.node
        if n.op_type in {"Conv", "Gemm", "MatMul"} and n.input and n.input[0] in inputs
    ]


def quantize_int8_static(
    source: Path,
    target: Path,
    calibration: np.ndarray,
    method: str = "minmax",
    activation_ranges: dict[str, tuple[float, float]] | None = None,
    float_stem: bool = True,
) -> None:
    """QDQ int8: per-channel symmetric int8 weights, uint8 activations calibrated on `calibration`.

    `activation_ranges` (tensor name → (min, max)) overrides calibration for those tensors;
    `float_stem` keeps the layer reading the input in float (see `stem_nodes`).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method {method!r}; choose one of {sorted(CALIBRATION_METHODS)}"
        )
    overrides = {
        name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
        for name, (low, high) in (activation_ranges or {}).items()
    }
    extra: dict[str, object] = {"TensorQuantOverrides": overrides} if overrides else {}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    quantize_static(
        str(source),
        str(target),
        ImageCalibrationReader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: the x86 int8 kernels
        weight_type=QuantType.QInt8,
        calibrate_method=CALIBRATION_METHODS[method],
        nodes_to_exclude=stem_nodes(source) if float_stem else None,
        extra_options=extra,
    )


def quantize_int8_dynamic(source: Path, target: Path) -> None:
    """int8 weights, activations quantized on the fly per batch (no calibration)."""
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


# ---- quantization-aware training -------------------------------------------------------------


class SymmetricWeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight (straight-through grads)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        absmax = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (absmax / WEIGHT_QMAX).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(
            weight, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX
        )


def _input_fake_quant(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
    return (module.input_fake_quant(args[0]),)


def prepare_qat(model: nn.Module, float_stem: bool = True) -> nn.Module:
    """A copy of `model` with BatchNorm folded and fake quantization on conv/linear layers.

    With `float_stem` the first layer (the one reading the input) stays float, as it will in
    the quantized model.
    """
    from torch.fx.experimental.optimization import fuse

    folded = fuse(model.eval(), inplace=False)  # conv+bn → conv, as onnxruntime would fold them
    for module in quantized_layers(folded, float_stem).values():
        parametrize.register_parametrization(module, "weight", SymmetricWeightFakeQuant())
        module.input_fake_quant = FakeQuantize(
            observer=MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=255,
            dtype=torch.quint8,
            qscheme=torch.per_tensor_affine,
        )
        module.qat_hook = module.register_forward_pre_hook(_input_fake_quant)
    return folded


def quantized_layers(model: nn.Module, float_stem: bool = False) -> dict[str, nn.Module]:
    """Conv and linear layers by qualified name (without the first with `float_stem`)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    return dict(list(layers.items())[1:]) if float_stem else layers


def finish_qat(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Bake the fake-quantized weights in, drop the fake quantizers; returns the input ranges.

    The weights left behind lie exactly on onnxruntime's int8 grid, so its quantizer reproduces
    them; the returned (min, max) per layer name are the activation ranges QAT learned.
    """
    ranges = {}
    for name, module in quantized_layers(model).items():
        if not hasattr(module, "input_fake_quant"):
            continue
        observer = module.input_fake_quant.activation_post_process
        ranges[name] = (float(observer.min_val), float(observer.max_val))
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        module.qat_hook.remove()
        del module.input_fake_quant, module.qat_hook
    return ranges


def onnx_input_ranges(
    model_path: Path, layer_ranges: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Map per-layer input ranges to the ONNX tensors feeding those layers' Conv/Gemm nodes.

    Layers are found by their weight initializer (`<layer>.weight`); a tensor feeding several
    layers gets the union of their ranges.
    """
    graph = onnx.load(str(model_path), load_external_data=False).graph
    ranges: dict[str, tuple[float, float]] = {}
    for node in graph.node:
        if node.op_type not in {"Conv", "Gemm", "MatMul"} or len(node.input) < 2:
            continue
        layer = node.input[1].removesuffix(".weight")
        if layer in layer_ranges:
            low, high = layer_ranges[layer]
            old = ranges.get(node.input[0], (low, high))
            ranges[node.input[0]] = (min(old[0], low), max(old[1], high))
    return ranges
