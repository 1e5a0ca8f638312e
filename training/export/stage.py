"""Build and measure every variant of one source model: fp32, int8, QAT, pruned, sparsity study.

Each builder leaves an ONNX file in the work directory and returns its figures; `__main__`
applies the gates and copies the passing files into the bundle. Progress goes through `say`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import agreement
from shared.bundle import TensorSpec
from shared.onnx import OnnxModel
from training import tracking
from training.export import prune, quantize, torch_native
from training.export.evaluate import Figures, Timing, quality, timings
from training.export.finetune import FineTune, TrainData, fine_tune
from training.export.onnx import (
    export_onnx,
    ort_optimize,
    parity,
    simplify,
    torch_logits,
    with_weights,
)

#: occlusion for the attribution agreement: 7x7 windows of 8x8 pixels on a 32x32 input
OCCLUSION = {"window": 8, "stride": 4}
VARIANTS = ("fp32", "int8-dynamic", "int8-static", "int8-qat", "pruned", "pruned-int8")


@dataclass(frozen=True)
class Options:
    """What to build and how (the command line's knobs)."""

    variants: tuple[str, ...] = VARIANTS
    opset: int = 18
    threads: int = 1
    timing: Timing = field(default_factory=Timing)
    calibration_method: str = "minmax"
    float_stem: bool = True
    calibration_size: int = 256
    train_limit: int | None = None
    prune_ratio: float = 0.5
    recovery: FineTune = field(default_factory=lambda: FineTune(epochs=5, lr=1e-3))
    qat: FineTune = field(default_factory=lambda: FineTune(epochs=2, lr=1e-4))
    study: FineTune = field(default_factory=lambda: FineTune(epochs=1, lr=1e-4))
    study_sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    torch_rows: tuple[str, ...] = torch_native.ROWS
    agreement_images: int = 8  # held-out digits whose occlusion maps are compared (0: none)
    checkpoint_dir: Path | None = None


@dataclass(frozen=True)
class Data:
    """Held-out test set, fine-tuning data and calibration images, all preprocessed."""

    test_inputs: np.ndarray
    test_labels: np.ndarray
    train: TrainData
    calibration: np.ndarray
    black: np.ndarray  # a black pixel, preprocessed: (C,) values occlusion paints with


def predictor(model: OnnxModel) -> agreement.PredictFn:
    """An onnxruntime variant as models.agreement's predict function (batch -> logits)."""
    return lambda batch: model.run({"input": batch})[0]


class Stage:
    """One export: the source net, the data, the options, and the figures built so far."""

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        specs: tuple[list[TensorSpec], list[TensorSpec]],
        options: Options,
        work: Path,
        fingerprint: str,
        say: Callable[[str], None],
    ) -> None:
        self.model = model.eval()
        self.data = data
        self.specs = specs
        self.options = options
        self.work = work
        self.fingerprint = fingerprint
        self.say = say
        self.shape = tuple(data.test_inputs.shape[1:])
        self.example = torch.from_numpy(data.test_inputs[:2])
        self.reference = torch_logits(self.model, data.test_inputs)
        self.reference_accuracy = float(np.mean(self.reference.argmax(1) == data.test_labels))
        self.fp32_top1: np.ndarray | None = None
        self.figures: list[Figures] = []
        self.sessions: dict[str, OnnxModel | torch_native.TorchRunner] = {}
        self.load_average = (0.0, 0.0)  # 1-minute load average before and after timing

    def path(self, name: str) -> Path:
        return self.work / f"model.{name}.onnx"

    def evaluate(
        self, name: str, path: Path, net: nn.Module, torch_reference: np.ndarray | None = None
    ) -> Figures:
        """Accuracy of `path` on held-out data; `torch_reference` (its PyTorch twin's logits)
        adds a parity check. Timing happens later, for all variants together."""
        model = OnnxModel(path, self.specs[0], self.specs[1], self.options.threads)
        found, logits = quality(model, self.data.test_inputs, self.data.test_labels, self.fp32_top1)
        fig = Figures(
            name=name,
            file=path.name,
            size_bytes=path.stat().st_size,
            params=tracking.parameter_count(net),
            flops=tracking.flops_per_image(net, self.shape),
            **found,
        )
        if torch_reference is not None:
            check = parity(torch_reference, logits)
            fig.max_abs_diff_torch = check.max_abs_diff
            fig.details["top1_agreement_torch"] = check.top1_agreement
        if name == "fp32":
            self.fp32_top1 = logits.argmax(1)
        self.say(
            f"{name}: top-1 {fig.accuracy:.2%}, agrees with fp32 {fig.agreement_fp32:.2%}, "
            f"{fig.size_bytes / 1e6:.2f} MB"
        )
        self.sessions[name] = model
        self.figures.append(fig)
        return fig

    def time_all(self) -> None:
        """Latency and throughput of every variant built, interleaved (see `timings`)."""
        timing = self.options.timing
        self.say(
            f"timing {len(self.sessions)} models with {self.options.threads} onnxruntime "
            f"thread(s): {timing.latency_runs} batch-1 and {timing.throughput_runs} batch-32 "
            f"runs each, in {timing.rounds} interleaved rounds"
        )
        started, load = time.perf_counter(), os.getloadavg()[0]
        measured = timings(self.sessions, self.data.test_inputs, timing)
        self.load_average = (load, os.getloadavg()[0])
        for fig in self.figures:
            for key, value in measured[fig.name].items():
                setattr(fig, key, value)
            self.say(
                f"{fig.name}: p50 {fig.latency_ms_p50:.2f} ms, p99 {fig.latency_ms_p99:.2f} ms, "
                f"{fig.throughput_ips:.0f} img/s at batch 32"
            )
        self.say(f"timing done ({time.perf_counter() - started:.1f}s)")

    def export(self, net: nn.Module, name: str) -> tuple[Path, Path]:
        """Trace `net` to ONNX: (the raw export, its simplified graph) in the work directory.

        The raw file keeps one initializer per state-dict entry (the study swaps weights in
        it); the simplified one is what gets optimized or quantized.
        """
        started = time.perf_counter()
        raw, clean = self.work / f"{name}.raw.onnx", self.work / f"{name}.clean.onnx"
        export_onnx(net, self.example, raw, self.options.opset, optimize=False)
        simplify(raw, clean)
        seconds = time.perf_counter() - started
        self.say(f"{name}: exported ONNX opset {self.options.opset} ({seconds:.1f}s)")
        return raw, clean

    def quantized(self, clean: Path, name: str, method: str, ranges: dict | None = None) -> Path:
        """Static QDQ int8 of a simplified export, calibrated on the calibration images."""
        pre = self.work / f"{name}.pre.onnx"
        quantize.prepare_for_quantization(clean, pre)
        started = time.perf_counter()
        mapped = quantize.onnx_input_ranges(pre, ranges) if ranges else None
        quantize.quantize_int8_static(
            pre, self.path(name), self.data.calibration, method, mapped, self.options.float_stem
        )
        learned = f", QAT ranges for {len(mapped)} tensors" if mapped else ""
        learned += ", stem kept float" if self.options.float_stem else ""
        self.say(
            f"{name}: int8 QDQ, per-channel, {method} calibration on "
            f"{len(self.data.calibration)} images{learned} ({time.perf_counter() - started:.1f}s)"
        )
        return self.path(name)

    def tune(self, net: nn.Module, config: FineTune, label: str, key: str) -> None:
        root = self.options.checkpoint_dir
        fine_tune(
            net,
            self.data.train,
            config,
            checkpoint_dir=root / key if root else None,
            fingerprint=f"{self.fingerprint}/{key}",
            say=self.say,
            label=label,
        )

    # ---- the variants --------------------------------------------------------------------
    def fp32(self) -> tuple[Path, Path]:
        """Export, optimize offline, measure with parity against PyTorch; returns the exports."""
        raw, clean = self.export(self.model, "fp32")
        ort_optimize(clean, self.path("fp32"))
        fig = self.evaluate("fp32", self.path("fp32"), self.model, self.reference)
        fig.details.update({"opset": self.options.opset, "ort_optimization": "extended"})
        return raw, clean

    def int8(self, clean: Path) -> None:
        if "int8-dynamic" in self.options.variants:
            pre = self.work / "int8-dynamic.pre.onnx"
            quantize.prepare_for_quantization(clean, pre)
            quantize.quantize_int8_dynamic(pre, self.path("int8-dynamic"))
            fig = self.evaluate("int8-dynamic", self.path("int8-dynamic"), self.model)
            fig.details["quantization"] = "dynamic, int8 per-channel weights"
        if "int8-static" in self.options.variants:
            method = self.options.calibration_method
            path = self.quantized(clean, "int8-static", method)
            fig = self.evaluate("int8-static", path, self.model)
            fig.details["quantization"] = f"static QDQ, per-channel, {method} calibration"
            fig.details["float_stem"] = self.options.float_stem

    def int8_qat(self) -> None:
        net = quantize.prepare_qat(copy.deepcopy(self.model), self.options.float_stem)
        self.tune(net, self.options.qat, "int8-qat fine-tuning (fake-quant)", "int8-qat")
        ranges = quantize.finish_qat(net)
        _, clean = self.export(net, "int8-qat")
        path = self.quantized(clean, "int8-qat", "minmax", ranges)
        fig = self.evaluate("int8-qat", path, self.model)
        fig.details["quantization"] = "QAT (BN folded, fake-quant), static QDQ with QAT ranges"
        fig.details["float_stem"] = self.options.float_stem

    def pruned(self) -> None:
        net = prune.prune_channels(
            copy.deepcopy(self.model), self.options.prune_ratio, self.example
        )
        before, after = tracking.parameter_count(self.model), tracking.parameter_count(net)
        self.say(
            f"pruned: {self.options.prune_ratio:.0%} of channels removed, "
            f"{before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters; recovery fine-tuning"
        )
        key = f"pruned-{self.options.prune_ratio:g}"
        self.tune(net, self.options.recovery, "pruned recovery", key)
        _, clean = self.export(net, "pruned")
        if "pruned" in self.options.variants:
            ort_optimize(clean, self.path("pruned"))
            reference = torch_logits(net, self.data.test_inputs)
            fig = self.evaluate("pruned", self.path("pruned"), net, reference)
            fig.details["prune_ratio"] = self.options.prune_ratio
        if "pruned-int8" in self.options.variants:
            path = self.quantized(clean, "pruned-int8", self.options.calibration_method)
            fig = self.evaluate("pruned-int8", path, net)
            fig.details.update(
                prune_ratio=self.options.prune_ratio, float_stem=self.options.float_stem
            )

    def sparsity_study(self, fp32_raw: Path) -> None:
        """Iterative global magnitude pruning with fine-tuning between steps; report only."""
        net = copy.deepcopy(self.model)
        for target in self.options.study_sparsities:
            prune.prune_magnitude(net, target)
            name = f"sparse-{round(target * 100)}"
            self.tune(net, self.options.study, f"{name} fine-tuning", name)
            prune.remove_masks(net)
            raw, clean = self.work / f"{name}.raw.onnx", self.work / f"{name}.clean.onnx"
            with_weights(fp32_raw, raw, net.state_dict())
            simplify(raw, clean)
            ort_optimize(clean, self.path(name))
            reference = torch_logits(net, self.data.test_inputs)
            fig = self.evaluate(name, self.path(name), net, reference)
            fig.kind = "study"
            fig.details["sparsity"] = round(prune.sparsity(net), 4)

    def torch_rows(self) -> None:
        """PyTorch's own runtime on the same data: TorchScript fp32 and torch.ao int8 (report
        only; see training.export.torch_native)."""
        params = tracking.parameter_count(self.model)  # int8 rows report their float source's
        flops = tracking.flops_per_image(self.model, self.shape)
        for name in self.options.torch_rows:
            path = self.work / f"model.{name}.pt"
            runner, diff, agreement = torch_native.build(
                name,
                self.model,
                self.data.calibration,
                self.data.test_inputs,
                path,
                self.options.threads,
                self.say,
            )
            found, _ = quality(runner, self.data.test_inputs, self.data.test_labels, self.fp32_top1)
            fig = Figures(
                name=name,
                file=path.name,
                size_bytes=path.stat().st_size,
                params=params,
                flops=flops,
                max_abs_diff_torch=diff,
                kind="torch",
                gate=torch_native.parity_gate(name, diff, agreement),
                **found,
            )
            fig.details["top1_agreement_torch"] = agreement
            fig.details["accuracy_drop_points"] = round(
                (self.reference_accuracy - fig.accuracy) * 100, 4
            )
            self.say(f"{name}: top-1 {fig.accuracy:.2%}, agrees with fp32 {fig.agreement_fp32:.2%}")
            self.sessions[name] = runner
            self.figures.append(fig)

    def attribution_agreement(self) -> None:
        """Do the compressed variants explain like fp32? Occlusion maps (forward passes only:
        the variants are onnxruntime files) of each variant and of fp32 on the first held-out
        digits, for fp32's predicted class, compared by Spearman rank correlation."""
        count = self.options.agreement_images
        if not count or "fp32" not in self.sessions:
            return
        started = time.perf_counter()
        images = self.data.test_inputs[:count]
        fp32 = self.sessions["fp32"]
        for fig in self.figures:
            if fig.kind != "variant" or fig.name == "fp32":
                continue
            found = agreement.attribution_agreement(
                predictor(fp32), predictor(self.sessions[fig.name]), images, **self.occlusion
            )
            fig.details["attribution_spearman"] = round(found.mean, 4)
            fig.details["attribution_spearman_min"] = round(min(found.per_image), 4)
        self.say(
            f"attribution agreement (occlusion {OCCLUSION['window']}px window, stride "
            f"{OCCLUSION['stride']}) on {len(images)} digits ({time.perf_counter() - started:.1f}s)"
        )

    @property
    def occlusion(self) -> dict:
        return {**OCCLUSION, "fill": self.data.black}

    def run(self, after_fp32: Callable[[Figures], bool]) -> list[Figures]:
        """Build everything asked for; stops after fp32 when `after_fp32` says so."""
        raw, clean = self.fp32()
        if not after_fp32(self.figures[0]):
            self.time_all()
            return self.figures
        self.int8(clean)
        if "int8-qat" in self.options.variants:
            self.int8_qat()
        if {"pruned", "pruned-int8"} & set(self.options.variants):
            self.pruned()
        if self.options.study_sparsities:
            self.sparsity_study(raw)
        self.torch_rows()
        self.attribution_agreement()
        self.time_all()
        return self.figures
