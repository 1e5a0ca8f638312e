"""ResNet-18 vs DenseNet-BC (growth rate x compression) on the digits: accuracy, size, cost, speed.

`modelplane study backbones` trains ResNet-18 and four DenseNets (growth rate k in {8, 16} x
transition compression in {0.5, 1.0}) on the same budget (digits at their native 8x8, 6 epochs,
batch 64, AdamW 2e-3 cosine, affine jitter, seed 0), one MLflow child run each under one parent. Per
setting: held-out test accuracy and macro F1, parameters, FLOPs per image (torch's
FlopCounterMode), onnxruntime latency at batch 1 and 32 (median, one intra-op thread by default)
and training time; a markdown table, bar plots, and the feature maps and activation histograms
of both families side by side, all logged to the parent run and written under --out.
Default run: 4 min 33 s measured on 2 shared cores (one torch thread); --quick (1 epoch,
200 images, 2-block DenseNets): 35 s, most of it the five ONNX exports.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import torch
from torch import nn

from shared.onnx import OnnxModel
from training import tracking
from training.export.evaluate import time_runs
from training.export.onnx import export_onnx, io_specs
from training.studies import common, vision

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GRID = [(k, c) for k in (8, 16) for c in (0.5, 1.0)]  # (growth rate, compression)
BUDGET = ["--image-size", "8", "--epochs", "6", "--batch-size", "64", "--seed", "0"]
QUICK_BUDGET = ["--image-size", "8", "--epochs", "1", "--batch-size", "32", "--train-limit", "200"]
OPSET = 18
HEADERS = [
    "setting",
    "test acc",
    "macro F1",
    "params",
    "MFLOPs/img",
    "ONNX b1 ms",
    "ONNX b32 ms",
    "train s",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="modelplane study backbones", description=__doc__)
    common.common_args(p, "backbones")
    p.add_argument("--latency-runs", type=int, help="timed runs per batch size (default 50)")
    p.add_argument("--onnx-threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = p.parse_args(argv)
    if args.latency_runs is None:
        args.latency_runs = 5 if args.quick else 50
    return args


def settings(quick: bool) -> dict[str, list[str]]:
    """Setting name -> classify flags; every setting shares the same budget."""
    budget = QUICK_BUDGET if quick else BUDGET
    blocks = ["--block-config", "2,2"] if quick else []
    chosen = {"resnet18": [*budget, "--arch", "resnet18"]}
    for growth, compression in GRID:
        flags = ["--arch", "densenet", "--growth-rate", str(growth)]
        flags += ["--compression", str(compression), *blocks]
        chosen[f"densenet-k{growth}-c{compression}"] = [*budget, *flags]
    return chosen


def onnx_latency_ms(
    model: nn.Module, inputs: np.ndarray, classes: int, runs: int, threads: int
) -> dict[int, float]:
    """Median onnxruntime milliseconds per run at batch 1 and batch 32 (fp32 export)."""
    channels, height, width = inputs.shape[1:]
    in_specs, out_specs = io_specs(channels, height, width, classes)
    with tempfile.TemporaryDirectory(prefix="backbone-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model.eval(), torch.from_numpy(inputs[:1]), path, OPSET)
        session = OnnxModel(path, in_specs, out_specs, threads)
        return {
            batch: 1000
            * statistics.median(
                time_runs(session, np.resize(inputs, (batch, *inputs.shape[1:])), runs)
            )
            for batch in (1, 32)
        }


def measure(trained: vision.Trained, args: argparse.Namespace) -> dict[str, float]:
    """The table's figures of one trained setting (logged to its child run too)."""
    spec, inputs = trained.setup.spec, trained.data.inputs["test"]
    classes = len(trained.setup.classes)
    latency = onnx_latency_ms(trained.model, inputs, classes, args.latency_runs, args.onnx_threads)
    figures = {
        "test_accuracy": trained.metrics["test_accuracy"],
        "test_macro_f1": trained.metrics["test_macro_f1"],
        "parameters": float(tracking.parameter_count(trained.model)),
        "flops_per_image": float(
            tracking.flops_per_image(trained.model, (spec.channels, spec.height, spec.width))
        ),
        "onnx_ms_batch1": latency[1],
        "onnx_ms_batch32": latency[32],
        "train_seconds": trained.train_seconds,
    }
    client = mlflow.MlflowClient()
    for key, value in figures.items():
        client.log_metric(trained.run_id, key, value)
    return figures


def table_row(name: str, f: dict[str, float]) -> list[str]:
    return [
        name,
        f"{f['test_accuracy']:.2%}",
        f"{f['test_macro_f1']:.4f}",
        f"{f['parameters']:,.0f}",
        f"{f['flops_per_image'] / 1e6:.1f}",
        f"{f['onnx_ms_batch1']:.2f}",
        f"{f['onnx_ms_batch32']:.2f}",
        f"{f['train_seconds']:.1f}",
    ]


def bars_figure(figures: dict[str, dict[str, float]]) -> Figure:
    """One bar chart per figure of the table, the settings side by side."""
    from matplotlib.figure import Figure

    panels = [
        ("test_accuracy", "test accuracy"),
        ("parameters", "parameters"),
        ("flops_per_image", "FLOPs / image"),
        ("onnx_ms_batch1", "ONNX ms, batch 1"),
        ("onnx_ms_batch32", "ONNX ms, batch 32"),
        ("train_seconds", "training s"),
    ]
    names = list(figures)
    fig = Figure(figsize=(13, 6.5))
    colors = ["tab:orange" if n.startswith("resnet") else "tab:blue" for n in names]
    for ax, (key, title) in zip(fig.subplots(2, 3).flat, panels, strict=True):
        ax.bar(range(len(names)), [figures[n][key] for n in names], color=colors)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def stage_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output of each stage (ResNet `layerN`, DenseNet `denseblockN`) for input `x`."""
    named = dict(model.named_children())
    if "features" in named:
        named = dict(named["features"].named_children())
    stages = {n: m for n, m in named.items() if n.startswith(("layer", "denseblock"))}
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, out.detach()))
        for n, m in stages.items()
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def feature_maps_figure(models: dict[str, nn.Module], image: torch.Tensor) -> Figure:
    """Rows: each model's first two stages; the 8 most active channels for one test digit."""
    from matplotlib.figure import Figure

    rows = []
    for name, model in models.items():
        outputs = stage_outputs(model, image[None])
        rows += [(f"{name}\n{stage}", out[0]) for stage, out in list(outputs.items())[:2]]
    fig = Figure(figsize=(12, 1.5 * len(rows)))
    axes = fig.subplots(len(rows), 9, squeeze=False)
    for (label, maps), row in zip(rows, axes, strict=True):
        row[0].imshow(image[0].numpy(), cmap="gray")
        row[0].set_ylabel(label, fontsize=7)
        strongest = maps.mean(dim=(1, 2)).argsort(descending=True)[:8]
        for ax, channel in zip(row[1:], strongest, strict=False):
            ax.imshow(maps[channel].numpy(), cmap="viridis")
            ax.set_title(f"ch {int(channel)} {tuple(maps.shape[1:])}", fontsize=6)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("input | the 8 most active channels of the first two stages")
    fig.tight_layout()
    return fig


def activations_figure(models: dict[str, nn.Module], inputs: torch.Tensor) -> Figure:
    """Histograms of every stage's outputs on held-out digits, one panel per model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(models), 3.5))
    for ax, (name, model) in zip(
        fig.subplots(1, len(models), squeeze=False)[0], models.items(), strict=True
    ):
        for stage, out in stage_outputs(model, inputs).items():
            values = out.flatten().numpy()
            ax.hist(
                values,
                bins=60,
                histtype="step",
                density=True,
                log=True,
                label=f"{stage} {out.shape[1]}ch",
            )
        ax.set_title(f"{name}: stage output distribution")
        ax.set_xlabel("activation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tracking_uri = common.connect(args.threads, args.experiment)
    chosen = settings(args.quick)
    with mlflow.start_run(
        run_name="study-backbones", tags={"modelplane.study": "backbones"}
    ) as run:
        mlflow.log_params(
            {
                "settings": ", ".join(chosen),
                "quick": args.quick,
                "budget": " ".join(QUICK_BUDGET if args.quick else BUDGET),
            }
        )
        print(
            f"[backbones] run {run.info.run_id} on {tracking_uri}: {len(chosen)} settings",
            flush=True,
        )
        trained, figures = {}, {}
        for index, (name, flags) in enumerate(chosen.items(), start=1):
            print(f"[backbones] {index}/{len(chosen)} {name}", flush=True)
            trained[name] = vision.train_setting(name, flags)
            figures[name] = measure(trained[name], args)
        rows = [table_row(name, f) for name, f in figures.items()]
        text = "# Backbone study\n\n" + common.markdown_table(HEADERS, rows)
        common.write_report(args.out, "backbones.md", text)
        families = {name: trained[name].model for name in list(trained)[:2]}
        test_inputs = torch.from_numpy(trained["resnet18"].data.inputs["test"][:64])
        plots = {
            "backbones.png": bars_figure(figures),
            "feature_maps.png": feature_maps_figure(families, test_inputs[0]),
            "activations.png": activations_figure(families, test_inputs),
        }
        for file, figure in plots.items():
            figure.savefig(args.out / file, dpi=110)
            tracking.log_figure(figure, f"plots/{file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
