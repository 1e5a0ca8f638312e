"""Training tricks, checked: gradient accumulation, bf16 autocast, partial freezing.

Gradient accumulation equals the larger batch, what bf16 autocast costs or saves, what partial
freezing buys.

On the language-ID classifier (`training.text --task classify`): first the gradients of k
accumulated batches of b against one batch of k*b on the same examples (dropout off), as the
largest absolute and relative difference; then settings trained side by side on the same data
and seed: fp32 at batch k*b, fp32 with k x b accumulated, bf16 autocast, embeddings frozen,
encoder frozen, each with test accuracy, training seconds, trainable parameters and the bytes
one training step allocates.

Default: 138-285 s measured with `--threads 1` on the shared 2-core machine (two runs;
`--quick`: seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import mlflow
import torch
from torch import nn

from models.text import build_model
from training.studies import textlab
from training.studies.common import common_args, connect, markdown_table, write_report
from training.text_tasks import TASKS, TextData

ACCUM = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelplane study tricks", description=__doc__)
    common_args(parser, "tricks")
    return parser.parse_args(argv)


def gradients(model: nn.Module, args: argparse.Namespace, parts: list[tuple]) -> list:
    """The parameters' gradients after `training.text.accumulate` over `parts`."""
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for part in parts:
        textlab.job.accumulate(model, TASKS[args.task], part, 0.0, args, scaler)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def accumulation_check(args: argparse.Namespace, data: TextData) -> dict[str, float]:
    """Largest |difference| and relative difference between k x b accumulated and k*b."""
    config = textlab.job.config_for(
        args, TASKS[args.task], data.tokenizer.get_vocab_size(), data.classes
    )
    torch.manual_seed(args.seed)
    model = build_model(dataclasses.replace(config, dropout=0.0)).train()
    index = list(range(args.batch_size))
    whole = gradients(model, args, [data.batch("train", index)])
    size = args.batch_size // ACCUM
    parts = [data.batch("train", index[i : i + size]) for i in range(0, len(index), size)]
    accumulated = gradients(model, textlab.job.replace_args(args, accum_steps=ACCUM), parts)
    diff = max(float((a - b).abs().max()) for a, b in zip(whole, accumulated, strict=True))
    scale = max(float(g.abs().max()) for g in whole)
    return {"max_abs_diff": diff, "max_relative_diff": diff / scale, "largest_gradient": scale}


def step_bytes(trained: textlab.Trained, args: argparse.Namespace, data: TextData) -> int:
    """Bytes allocated by one forward + backward on one training batch, as trained."""
    batch = data.batch("train", range(args.batch_size // args.accum_steps))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model = trained.model.train()
    cost = textlab.allocated_bytes(
        lambda: textlab.job.accumulate(model, TASKS[args.task], batch, 0.0, args, scaler)
    )
    model.zero_grad(set_to_none=True)
    return cost


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    connect(options.threads, options.experiment)
    flags = ["--batch-size", "64", "--dropout", "0.1"]
    if options.quick:
        flags += ["--train-limit", "16", "--epochs", "2"]
    else:
        flags += ["--train-limit", "300", "--epochs", "3", "--vocab-size", "2000"]
    base = textlab.text_args("classify", options.quick, *flags)
    data = textlab.load(base)
    micro = base.batch_size // ACCUM
    settings: list[tuple[str, dict[str, Any]]] = [
        (f"fp32, batch {base.batch_size}", {}),
        (f"fp32, {ACCUM} x {micro} accumulated", {"accum_steps": ACCUM, "batch_size": micro}),
        ("bf16 autocast", {"amp": True}),
        ("embeddings frozen", {"freeze": "embeddings"}),
        ("encoder frozen", {"freeze": "encoder"}),
    ]
    rows = []
    with mlflow.start_run(run_name="study tricks"):
        mlflow.set_tag("modelplane.study", "tricks")
        check = accumulation_check(base, data)
        with mlflow.start_run(run_name="accumulation check", nested=True):
            mlflow.log_metrics(check)
        textlab.job.say(f"accumulation check: {check}")
        for name, changes in settings:
            args = textlab.job.replace_args(base, **changes)
            trained = textlab.train(name, args, data)
            trainable = sum(p.numel() for p in trained.model.parameters() if p.requires_grad)
            row = {
                "setting": name,
                "accuracy": trained.metrics["test_accuracy"],
                "seconds": trained.fit.seconds,
                "trainable": trainable,
                "step_mib": step_bytes(trained, args, data) / 2**20,
            }
            rows.append(row)
            with mlflow.start_run(run_id=trained.run_id, nested=True):
                mlflow.log_metrics({"trainable_parameters": trainable, "step_mib": row["step_mib"]})
        mlflow.log_metrics({f"accumulation_{k}": v for k, v in check.items()})
        write_report(options.out, "tricks.md", render(check, rows))
    return 0


def render(check: dict[str, float], rows: list[dict]) -> str:
    table = [
        [
            r["setting"],
            f"{r['accuracy']:.3f}",
            f"{r['seconds']:.1f}",
            f"{r['trainable']:,}",
            f"{r['step_mib']:.1f}",
        ]
        for r in rows
    ]
    return (
        "# Training tricks, checked (language ID)\n\n"
        f"Gradients of {ACCUM} accumulated batches vs one batch of the same examples: largest "
        f"absolute difference **{check['max_abs_diff']:.2e}** (relative to the largest "
        f"gradient {check['max_relative_diff']:.2e}).\n\n"
        + markdown_table(
            [
                "setting",
                "test accuracy",
                "train seconds",
                "trainable parameters",
                "MiB per forward + backward (one micro-batch)",
            ],
            table,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
