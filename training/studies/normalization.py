"""Normalization and initialisation: pre/post-LN, Layer/Batch/RMSNorm, warmup, init, seeds.

Pre-LN vs post-LN, LayerNorm vs BatchNorm vs RMSNorm, warmup on and off, three weight
initialisations, each over several seeds.

Every setting trains the language-ID classifier (`training.text --task classify`, 3 encoder
layers, a high peak learning rate so that instability shows) on the same data with the same
seeds; the table gives test accuracy (mean and spread over seeds), the final training loss and
how many seeds diverged (a non-finite loss, or test accuracy under twice chance); the plot
gives the training curves (batch loss, mean over seeds).

Default: 8 settings x 3 seeds, 466 s measured with `--threads 1` on the shared 2-core
machine (`--quick`: 1 seed, seconds).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
from torch import nn

from training.studies import textlab
from training.studies.common import common_args, connect, markdown_table, write_report

WARMUP_STEPS = 30
QUICK_WARMUP_STEPS = 3


def init_linear(kind: str) -> Callable[[nn.Module], None]:
    """Re-initialise every Linear weight (biases to zero): xavier or normal(0, 0.02)."""

    def apply(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                if kind == "xavier":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    return apply


@dataclass(frozen=True)
class Setting:
    name: str
    changes: dict[str, Any] = field(default_factory=dict)  # TextConfig fields
    warmup: bool = True
    init: str = "default"  # PyTorch's own (kaiming-uniform Linear), xavier, normal-0.02


SETTINGS = (
    Setting("pre-LN LayerNorm"),
    Setting("pre-LN LayerNorm, no warmup", warmup=False),
    Setting("post-LN LayerNorm", {"pre_norm": False}),
    Setting("post-LN LayerNorm, no warmup", {"pre_norm": False}, warmup=False),
    Setting("pre-LN BatchNorm", {"norm": "batch"}),
    Setting("pre-LN RMSNorm", {"norm": "rms"}),
    Setting("pre-LN LayerNorm, xavier init", init="xavier"),
    Setting("pre-LN LayerNorm, normal(0.02) init", init="normal-0.02"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelplane study normalization", description=__doc__)
    common_args(parser, "normalization")
    parser.add_argument("--seeds", type=int, help="seeds per setting (3; quick 1)")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    connect(options.threads, options.experiment)
    seeds = options.seeds or (1 if options.quick else 3)
    flags = ["--layers", "3", "--lr", str(options.lr), "--dropout", "0.1"]
    if options.quick:
        flags += ["--train-limit", "8", "--epochs", "1", "--d-model", "16", "--layers", "2"]
    else:
        flags += [
            "--train-limit",
            "150",
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--vocab-size",
            "2000",
        ]
    base = textlab.text_args("classify", options.quick, *flags)
    data = textlab.load(base)
    chance = 1 / data.classes
    rows, curves = [], {}
    with mlflow.start_run(run_name="study normalization"):
        mlflow.set_tag("modelplane.study", "normalization")
        for setting in SETTINGS:
            warmup = (
                (QUICK_WARMUP_STEPS if options.quick else WARMUP_STEPS) if setting.warmup else 0
            )
            accuracies, losses, diverged, seconds = [], [], 0, 0.0
            for seed in range(seeds):
                args = textlab.job.replace_args(base, seed=seed, warmup_steps=warmup)
                init = None if setting.init == "default" else init_linear(setting.init)
                trained = textlab.train(
                    f"{setting.name} seed {seed}", args, data, setting.changes, init
                )
                accuracy = trained.metrics["test_accuracy"]
                steps = trained.fit.history["step_loss"]
                failed = not textlab.finite(steps) or accuracy < 2 * chance
                diverged += failed
                accuracies.append(accuracy)
                losses.append(float(np.mean(steps[-10:])))
                seconds += trained.fit.seconds
                curves.setdefault(setting.name, []).append(steps)
            rows.append(
                {
                    "setting": setting.name,
                    "accuracy": float(np.mean(accuracies)),
                    "spread": float(np.std(accuracies)),
                    "final_loss": float(np.nanmean(losses)),
                    "diverged": diverged,
                    "seconds": seconds / seeds,
                }
            )
            textlab.job.say(f"{setting.name}: {rows[-1]}")
        mean_curves = {
            name: smooth(np.nanmean(np.array(runs), axis=0)) for name, runs in curves.items()
        }
        textlab.line_plot(
            mean_curves,
            "optimizer batch",
            "training loss (mean over seeds)",
            "plots/training_curves.png",
        )
        best = max(rows, key=lambda r: r["accuracy"])
        mlflow.log_metrics({"best_accuracy": best["accuracy"], "seeds": seeds})
        write_report(options.out, "normalization.md", render(rows, seeds, options.lr))
    return 0


def smooth(values: np.ndarray, window: int = 10) -> tuple[list[int], list[float]]:
    """A running mean (x: the batch each window ends at), so a curve shows its trend rather
    than batch-to-batch noise."""
    window = max(1, min(window, len(values)))
    means = np.convolve(values, np.ones(window) / window, mode="valid")
    return list(range(window, len(values) + 1)), list(means)


def render(rows: list[dict], seeds: int, lr: float) -> str:
    table = [
        [
            r["setting"],
            f"{r['accuracy']:.3f} ± {r['spread']:.3f}",
            f"{r['final_loss']:.3f}",
            f"{r['diverged']}/{seeds}",
            f"{r['seconds']:.1f}",
        ]
        for r in rows
    ]
    return (
        f"# Normalization and initialisation (language ID, 3 layers, peak lr {lr:g})\n\n"
        + markdown_table(
            ["setting", "test accuracy (mean ± sd)", "final train loss", "diverged", "seconds"],
            table,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
