"""One export run: data, variants, gates, report, bundle, verification, MLflow logging."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shared.cache import FetchedModel
from shared.errors import BundleError
from shared.media import ImageSpec
from shared.settings import available_cores
from training import data as digits
from training.export import report, torch_native, writer
from training.export.evaluate import Figures
from training.export.finetune import TrainData
from training.export.gates import Gates, fastest, judge
from training.export.stage import OCCLUSION, Data, Options, Stage

SMOKE_SAMPLES = 8
QAT_NOTE = (
    "`int8-qat`: torch 2.14 no longer ships the PT2E flow (`torch.ao.quantization.quantize_pt2e` "
    "is gone; it moved to torchao, which this project does not install), and the eager flow's "
    "`convert()` targets PyTorch's own int8 kernels, not ONNX. So QAT runs on a "
    "BatchNorm-folded copy with `torch.ao.quantization.FakeQuantize` (moving-average min/max) on "
    "the input of every conv/linear layer but the stem and symmetric per-channel int8 fake "
    "quantization of their weights (onnxruntime's own grid, [-127, 127]); the fine-tuned float "
    "graph is exported and quantized by onnxruntime's QDQ quantizer with the QAT-learned input "
    "ranges (TensorQuantOverrides) and min-max calibration for the other tensors."
)
STUDY_NOTE = (
    "`sparse-N` rows (unstructured study, never bundled): global L1 magnitude pruning with "
    "`torch.nn.utils.prune`, raised step by step to each sparsity with one fine-tuning epoch "
    "in between, masks made permanent with `prune.remove` before export. The zeros are stored "
    "densely and dense CPU kernels multiply them anyway: size and latency stay those of fp32. "
    "Only compression sees the zeros (zlib size below)."
)


def load_data(spec: ImageSpec, classes: list[int] | None, options: Options) -> Data:
    """Held-out test set, the fine-tuning set (augmented) and the calibration images."""
    test = digits.load_test_set(spec, classes)
    train = digits.load_splits(classes)["train"]
    tuned = digits.stratified_subset(train, options.train_limit)
    calibration = digits.stratified_subset(train, options.calibration_size)
    return Data(
        test_inputs=test.inputs,
        test_labels=test.labels,
        train=TrainData(
            digits.preprocess(tuned.images, spec), tuned.labels, digits.train_augmentation(spec)
        ),
        calibration=digits.preprocess(calibration.images, spec),
        black=digits.preprocess(np.zeros((1, 8, 8), np.uint8), spec)[0, :, 0, 0],
    )


class Export:
    """Builds, judges, reports and bundles one source model's variants."""

    def __init__(
        self,
        fetched: FetchedModel,
        name: str,
        options: Options,
        gates: Gates,
        tmp: Path,
        say: Callable[[str], None],
    ) -> None:
        self.fetched = fetched
        self.name = name
        self.options = options
        self.gates = gates
        self.say = say
        self.work = tmp / "work"
        self.bundle_dir = tmp / "bundle"
        self.work.mkdir()
        self.bundle_dir.mkdir()
        self.default: str | None = None
        self.figures: list[Figures] = []
        self.blocking: list[str] = []
        self.context: list[str] = []
        self.reference_accuracy = 0.0

    def stage(self) -> Stage:
        from models.classify import load_torch_bundle

        source = self.fetched.bundle
        torch.set_num_threads(available_cores())
        spec = ImageSpec.from_manifest(source.preprocessing)
        classes = source.preprocessing.get("classes")
        data = load_data(spec, classes, self.options)
        recorded = source.manifest.get("source", {}).get("split_hash")
        if recorded and recorded != digits.split_hash(digits.load_splits(classes)):
            raise BundleError(
                f"{source.name} was trained on another data split than this checkout makes; "
                "its held-out figures would not be held out"
            )
        weights_sha = source.manifest["files"][source.manifest["torch_weights"]]["sha256"]
        fingerprint = f"{weights_sha}/{spec.to_manifest()}/{self.options.train_limit}"
        self.context += [
            f"source: `models:/{self.fetched.name}/{self.fetched.version}` "
            f"(run {self.fetched.run_id}), architecture {source.manifest['architecture']['name']}",
            f"held-out: {len(data.test_labels)} test digits; fine-tuning on "
            f"{len(data.train.labels)} training digits; calibration on {len(data.calibration)}",
            f"onnxruntime threads: {self.options.threads}; opset {self.options.opset}; "
            f"{self.options.timing.latency_runs} batch-1 runs, "
            f"{self.options.timing.throughput_runs} batch-32 runs per variant",
            f"gates: accuracy drop <= {self.gates.max_accuracy_drop:g} points vs PyTorch; "
            f"parity <= {self.gates.parity_atol:.0e} with identical top-1; "
            f"required: {', '.join(self.gates.required)}",
        ]
        specs = (source.inputs, source.outputs)
        model = load_torch_bundle(source)
        return Stage(model, data, specs, self.options, self.work, fingerprint, self.say)

    def run(self) -> list[str]:
        """Build and judge everything, write report and bundle; returns blocking reasons."""
        stage = self.stage()
        self.context.append(f"PyTorch top-1 on held-out: {stage.reference_accuracy:.2%}")
        self.reference_accuracy = stage.reference_accuracy
        fp32_gates = Gates(self.gates.max_accuracy_drop, self.gates.parity_atol, ("fp32",))
        self.figures = stage.run(lambda fig: not judge([fig], stage.reference_accuracy, fp32_gates))
        before, after = stage.load_average
        self.context.append(
            f"1-minute load average while timing: {before:.1f} -> {after:.1f} "
            f"on {available_cores()} cores"
        )
        self.blocking = judge(self.figures, stage.reference_accuracy, self.gates)
        if not self.blocking:
            self.default = fastest(self.figures)
        self.write_report()
        if self.blocking:
            return self.blocking
        sample = stage.data.test_inputs[:SMOKE_SAMPLES]
        info = {
            "opset": self.options.opset,
            "threads": self.options.threads,
            "max_accuracy_drop": self.gates.max_accuracy_drop,
            "reference_accuracy": stage.reference_accuracy,
            "calibration_method": self.options.calibration_method,
        }
        writer.write_bundle(
            self.bundle_dir,
            self.fetched,
            self.name,
            self.figures,
            self.work,
            sample,
            self.default or "fp32",
            info,
        )
        try:
            writer.verify(self.bundle_dir)
        except BundleError as exc:
            self.blocking.append(f"bundle verification: {exc}")
            self.default = None
            self.write_report()  # the logged report must say why nothing was registered
        return self.blocking

    def bundled(self) -> list[str]:
        return [fig.name for fig in self.figures if fig.in_bundle]

    def table(self) -> str:
        return report.table(self.figures, self.default)

    def notes(self) -> list[str]:
        notes = [
            "FLOPs are those of the float graph (torch FlopCounterMode, one image); int8 "
            "variants run the same number of multiply-adds in int8. params of int8 variants "
            "are their float source's.",
            "Static int8 variants keep the stem (the convolution reading the 3-channel input) "
            "in float unless `--no-float-stem`: quantizing it moved a quick model's top-1 "
            "agreement with fp32 from 99.6% to 95.2% for ~15% more batch-32 throughput.",
            "`int8-dynamic` quantizes activations per batch at run time (ConvInteger): slow for "
            "convolution nets on CPU, kept for transformer-style models where it helps; its "
            "answer for an image can depend on which images share its (dynamic) batch.",
            "Timings come from one process on a machine other jobs may share: under load they "
            "move by 2x or more between runs (see the load average above), and batch-1 p99 "
            "mostly measures the scheduler. Compare variants within one report: they are timed "
            "in interleaved rounds.",
            QAT_NOTE,
        ]
        if any("attribution_spearman" in fig.details for fig in self.figures):
            notes.append(
                "`attr corr`: mean Spearman rank correlation between the variant's occlusion "
                f"map and fp32's, for fp32's predicted class, on the first "
                f"{self.options.agreement_images} held-out digits (black "
                f"{OCCLUSION['window']}x{OCCLUSION['window']} windows, stride "
                f"{OCCLUSION['stride']}; `models/agreement.py`). 1 means the variant puts the "
                "same pixels first; occlusion maps of any net follow the ink, so read it "
                "against 1, not 0 (a net with shuffled weights scores anywhere in -0.8..0.9)."
            )
        if any(fig.kind == "torch" for fig in self.figures):
            notes.append(torch_native.NOTE)
        study = [fig for fig in self.figures if fig.kind == "study"]
        if study:
            notes.append(STUDY_NOTE)
            for fig in study:
                packed = len(zlib.compress((self.work / f"model.{fig.name}.onnx").read_bytes(), 6))
                notes.append(
                    f"`{fig.name}`: measured sparsity {fig.details['sparsity']:.1%}, "
                    f"{fig.size_bytes / 1e6:.2f} MB on disk, {packed / 1e6:.2f} MB zlib-compressed"
                )
        return notes

    def write_report(self) -> None:
        """report.md and tradeoffs.png into the bundle directory (also logged to the run)."""
        text = report.markdown(
            self.figures, self.default, self.context, self.notes(), self.blocking
        )
        (self.bundle_dir / writer.REPORT).write_text(text)
        plot = report.tradeoff_figure(self.figures)
        plot.savefig(self.bundle_dir / writer.PLOT, dpi=110)

    def log_to_mlflow(self) -> None:
        """Per-variant metrics, fp32 parity, the report and the plot, on the active run."""
        import mlflow

        metrics: dict[str, float] = {"reference_accuracy": self.reference_accuracy}
        for fig in self.figures:
            for key in (
                "accuracy",
                "macro_f1",
                "agreement_fp32",
                "size_bytes",
                "params",
                "flops",
                "latency_ms_p50",
                "latency_ms_p99",
                "throughput_ips",
            ):
                metrics[f"{fig.name}.{key}"] = float(getattr(fig, key))
            metrics[f"{fig.name}.in_bundle"] = float(fig.in_bundle)
            if "attribution_spearman" in fig.details:
                metrics[f"{fig.name}.attribution_spearman"] = fig.details["attribution_spearman"]
        fp32 = next(fig for fig in self.figures if fig.name == "fp32")
        metrics["parity_max_abs_diff"] = float(fp32.max_abs_diff_torch or 0.0)
        metrics["parity_top1_agreement"] = float(fp32.details.get("top1_agreement_torch", 0.0))
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(self.bundle_dir / writer.REPORT))
        mlflow.log_artifact(str(self.bundle_dir / writer.PLOT))
        if self.default:
            mlflow.set_tag("modelplane.default_variant", self.default)
