"""PyTorch-native rows of the trade-off table: TorchScript, and int8 with `torch.ao.quantization`.

Measured on the same held-out digits, in the same interleaved timing rounds and with the same
thread count as the onnxruntime variants, so the table compares runtimes on equal terms. They
are reported and never bundled: serving loads ONNX, safetensors and JSON only.

- `torchscript`: the fp32 network traced (`torch.jit.trace`), frozen (`torch.jit.freeze`
  folds parameters and attributes into constants), saved and loaded back from the file;
  its parity gate compares the loaded file's logits with the eager network's.
- `torch-int8-static`: post-training static quantization in FX graph mode
  (`prepare_fx` inserts observers from the x86 backend's default QConfigMapping — per-channel
  symmetric int8 weights, histogram-observed uint8 activations; the calibration images run
  through it; `convert_fx` swaps in quantized kernels (fbgemm/oneDNN)). FX, because torch
  2.14 no longer ships PT2E (`prepare_pt2e` moved to torchao, which this project does not
  install) and eager mode needs hand-written QuantStub/DeQuantStub and fusion lists per
  architecture, while FX traces the network and fuses conv-bn-relu itself.
- `torch-int8-dynamic`: `quantize_dynamic` of the linear layers (int8 weights, activations
  quantized per batch at run time); on a convolution net only the classifier head changes.

Both int8 rows are traced to TorchScript too (their file size is that artifact's) and are
gated on top-1 agreement with their eager form (see `parity_gate`).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.export.onnx import PARITY_ATOL, parity

ROWS = ("torchscript", "torch-int8-static", "torch-int8-dynamic")
BACKEND = "x86"
INT8_AGREEMENT = 0.99  # top-1 agreement of an int8 TorchScript file with its eager form
NOTE = (
    "`torch*` rows (PyTorch's own runtime, reported, never bundled): TorchScript is a traced and "
    "frozen fp32 graph; `torch-int8-static` is post-training static quantization with "
    "`torch.ao.quantization` in FX graph mode (x86 backend: fbgemm/oneDNN kernels, per-channel "
    "weights, observers calibrated on the calibration images); torch 2.14 has no PT2E "
    "(moved to torchao) and eager mode needs per-architecture stubs and fusion lists. "
    "`torch-int8-dynamic` quantizes only the linear layers (here the head). Each is timed with "
    "torch's intra-op threads set to the onnxruntime thread count. "
    "TorchScript files are zip archives whose code and constants are read by TorchScript's "
    "own unpickler (`torch.jit.load`): safer than `torch.load`, but still pickle-framed, tied "
    "to the PyTorch version, and needing PyTorch in the serving image; torch 2.14 also "
    "deprecates `torch.jit.trace` in favour of torch.export. So serving keeps to ONNX "
    "(onnxruntime only) and safetensors."
)


class TorchRunner:
    """A TorchScript module behind the `run({"input": batch}) -> [logits]` of OnnxModel, with
    torch's intra-op threads set to `threads` while it runs (restored afterwards)."""

    def __init__(self, module: torch.jit.ScriptModule, threads: int) -> None:
        self.module = module
        self.threads = threads

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode(), quiet_deprecations():
                return [self.module(torch.from_numpy(feeds["input"])).numpy()]
        finally:
            torch.set_num_threads(before)


def script(net: nn.Module, example: torch.Tensor, path: Path) -> torch.jit.ScriptModule:
    """Trace, freeze and save `net`, and return the module loaded back from `path`."""
    with torch.inference_mode(), quiet_deprecations(), warnings.catch_warnings():
        # quantized FX graphs hand Python scalars (scales, zero points) to their ops, which the
        # tracer flags as constants: they are constants, and the parity gate checks the trace
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.freeze(torch.jit.trace(net.eval(), example))
        torch.jit.save(traced, str(path))
        return torch.jit.load(str(path))


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    """torch 2.14 warns on every call that torch.ao.quantization will move to torchao and that
    `torch.jit.*` is deprecated for torch.export; both work in 2.14 and the report's note
    says so, so these warnings (only these) are silenced here (only here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        # the x86 backend's own default QConfig still passes reduce_range to its observers
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize")
        yield


def static_int8(net: nn.Module, calibration: np.ndarray, example: torch.Tensor) -> nn.Module:
    """FX graph mode post-training static quantization, calibrated on `calibration`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = BACKEND
    with quiet_deprecations():
        prepared = prepare_fx(
            copy.deepcopy(net).eval(), get_default_qconfig_mapping(BACKEND), (example,)
        )
        with torch.inference_mode():
            for start in range(0, len(calibration), 32):
                prepared(torch.from_numpy(calibration[start : start + 32]))
        return convert_fx(prepared)


def dynamic_int8(net: nn.Module) -> nn.Module:
    """Dynamic int8 of the linear layers (weights int8, activations quantized per batch)."""
    from torch.ao.quantization import quantize_dynamic

    torch.backends.quantized.engine = BACKEND
    with quiet_deprecations():
        return quantize_dynamic(copy.deepcopy(net).eval(), {nn.Linear}, dtype=torch.qint8)


def build(
    name: str,
    net: nn.Module,
    calibration: np.ndarray,
    inputs: np.ndarray,
    path: Path,
    threads: int,
    say: Callable[[str], None],
) -> tuple[TorchRunner, float, float]:
    """One row's TorchScript file at `path`: (its runner with `threads` intra-op threads,
    parity max abs diff of the loaded file against the eager form, top-1 agreement)."""
    started = time.perf_counter()
    example = torch.from_numpy(inputs[:2])
    if name == "torchscript":
        eager = net.eval()
    elif name == "torch-int8-static":
        eager = static_int8(net, calibration, example)
    elif name == "torch-int8-dynamic":
        eager = dynamic_int8(net)
    else:
        raise ValueError(f"unknown PyTorch row {name!r}; known: {', '.join(ROWS)}")
    loaded = script(eager, example, path)
    runner = TorchRunner(loaded, threads)
    with torch.inference_mode(), quiet_deprecations():  # one batch, as the runner's:
        reference = eager(torch.from_numpy(inputs)).numpy()  # dynamic int8 is per batch
    check = parity(reference, runner.run({"input": inputs})[0])
    say(
        f"{name}: TorchScript {path.stat().st_size / 1e6:.2f} MB, loaded back: max abs diff "
        f"{check.max_abs_diff:.1e} vs eager ({time.perf_counter() - started:.1f}s)"
    )
    return runner, check.max_abs_diff, check.top1_agreement


def parity_gate(name: str, max_abs_diff: float, agreement: float) -> str:
    """Why a row's TorchScript file fails its parity gate against its eager form; empty when
    it passes. fp32 must match to float noise with identical top-1; an int8 file runs other
    (fused, frozen) kernels than eager int8, so its logits may move by a quantization step,
    and the gate is top-1 agreement of at least INT8_AGREEMENT."""
    if name == "torchscript":
        if max_abs_diff <= PARITY_ATOL and agreement == 1.0:
            return ""
        return (
            f"TorchScript parity fails: max abs logit diff {max_abs_diff:.2e} "
            f"(gate {PARITY_ATOL:.0e}), top-1 agreement {agreement:.2%}"
        )
    if agreement >= INT8_AGREEMENT:
        return ""
    return (
        f"TorchScript parity fails: top-1 agreement with eager int8 {agreement:.2%} "
        f"(gate {INT8_AGREEMENT:.0%}), max abs logit diff {max_abs_diff:.2e}"
    )
