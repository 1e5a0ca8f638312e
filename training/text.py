"""python -m training.text --task classify|generate: train a small transformer, log, register.

classify: language identification (12 languages, Faker sentences) with an encoder-only model;
registers `text-classify-torch@candidate`. generate: code summarization (stdlib functions →
first docstring sentence) with an encoder-decoder; registers `text-generate-torch@candidate`.
Both train a byte-level BPE tokenizer on the training split and ship it in the bundle.

Training: AdamW, linear warmup then cosine decay, gradient clipping and accumulation, autocast
(bf16 on CPU, fp16 with a grad scaler on CUDA), `--freeze encoder|embeddings`, teacher forcing
with optional scheduled sampling and label smoothing. `--sweep 1x32,2x64` adds depth x width
child runs. `--device auto|cpu|cuda` (auto: CUDA when there is one) holds the model, batches and
evaluation; weights are saved from CPU copies.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch import Tensor, nn

from models.text import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    TextConfig,
    build_model,
    freeze,
    write_text_bundle,
)
from shared.registration import register, use_tracking_server
from shared.settings import available_cores
from training import text_data, tracking
from training.text_device import DeviceError, autocast, pick_device, use_grad_scaler
from training.text_tasks import TASKS, Task

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
PROGRESS_S = 20.0  # a progress line at least this often within an epoch
# options only one task uses; the other gets these (the tasks' own defaults come first)
COMMON_DEFAULTS: dict[str, Any] = {
    "label_smoothing": 0.0,
    "no_repeat_ngram": 0,
    "extra_packages": "",
}


def sweep_list(text: str) -> list[tuple[int, int]]:
    """`1x32,2x64` → [(1, 32), (2, 64)]: depth x width (argparse type)."""
    try:
        pairs = [tuple(int(v) for v in part.split("x")) for part in text.split(",") if part]
        return [(depth, width) for depth, width in pairs]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DEPTHxWIDTH,... ({exc})") from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.text",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--task", choices=sorted(TASKS), required=True)
    add("--quick", action="store_true", help="a tiny run that finishes in seconds (tests, CI)")
    add("--layers", type=int, help="encoder (and decoder) depth")
    add("--d-model", type=int, help="width")
    add("--heads", type=int, help="attention heads")
    add("--d-ff", type=int, help="feed-forward width (default 2 x d_model)")
    add("--positional", choices=("sinusoidal", "learned"), default="sinusoidal")
    add("--dropout", type=float, default=0.1)
    add("--vocab-size", type=int, help="BPE vocabulary size")
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    add("--lr", type=float, help="peak AdamW learning rate (1e-3; quick 3e-3)")
    add("--weight-decay", type=float, default=0.01)
    add("--warmup-steps", type=int, help="linear warmup (default 5%% of the optimizer steps)")
    add("--clip", type=float, default=1.0, help="gradient-norm clipping")
    add("--amp", action=argparse.BooleanOptionalAction, default=False, help="autocast")
    add("--freeze", choices=("encoder", "embeddings"), help="parameters left untrained")
    add(
        "--scheduled-sampling",
        type=float,
        default=0.0,
        help="max share of decoder inputs "
        "replaced by the model's own predictions (ramped up linearly; generate only)",
    )
    add("--train-limit", type=int, help="training examples (classify: per language)")
    add("--eval-limit", type=int, help="test examples decoded for BLEU (generate)")
    add("--sweep", type=sweep_list, default=[], help="depth x width child runs, e.g. 1x32,2x64")
    add("--sweep-epochs", type=int, default=1, help="epochs per sweep run")
    add("--label-smoothing", type=float, help="generate: cross-entropy label smoothing (0.1)")
    add(
        "--no-repeat-ngram",
        type=int,
        help="generate: evaluation decoding never repeats an n-gram of this size (0 = off)",
    )
    add(
        "--extra-packages",
        help="generate: installed packages whose functions join the training split "
        f"(comma-separated; default {','.join(text_data.EXTRA_PACKAGES)}; quick: none)",
    )
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if any")
    add("--threads", type=int, default=0, help="torch threads (0 = available cores)")
    add("--seed", type=int, default=0)
    add("--model-name", help="registered model (default text-<task>-torch)")
    add("--alias", default="candidate")
    add("--experiment", help="MLflow experiment (default text-<task>)")
    args = p.parse_args(argv)
    task: Task = TASKS[args.task]
    for key, value in {**COMMON_DEFAULTS, **(task.quick if args.quick else task.full)}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.d_ff = args.d_ff or 2 * args.d_model
    args.model_name = args.model_name or f"text-{args.task}-torch"
    args.experiment = args.experiment or f"text-{args.task}"
    return args


def say(message: str) -> None:
    print(f"[text] {message}", flush=True)


def config_for(args: argparse.Namespace, task: Task, vocab: int, classes: int) -> TextConfig:
    return TextConfig(
        kind=task.kind,
        vocab_size=vocab,
        d_model=args.d_model,
        heads=args.heads,
        layers=args.layers,
        decoder_layers=args.layers,
        d_ff=args.d_ff,
        max_len=args.max_len,
        dropout=args.dropout,
        positional=args.positional,
        num_classes=classes,
    )


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """LR factor: linear warmup to 1, then cosine decay to 0.05."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class Fit:
    """The result of training: losses per epoch (and per batch: `step_loss`) and seconds."""

    history: dict[str, list[float]]
    seconds: float


def accumulate(
    model: nn.Module,
    task: Task,
    batch: tuple[Tensor, ...],
    sampling: float,
    args: argparse.Namespace,
    scaler: torch.amp.GradScaler,
) -> float:
    """Add one batch's share (1 / accum_steps) of the gradient of the loss to `.grad`; the
    batch's loss. k batches of b then give the gradient of one batch of k*b when the loss is a
    mean over equal parts (classification; token means only when every part has as many
    target tokens), which `tests/unit/test_text_training.py` checks."""
    device = next(model.parameters()).device.type  # autocast where the weights are
    with autocast(args.amp, device):
        loss = task.loss(model, batch, sampling) / args.accum_steps
    scaler.scale(loss).backward()
    return float(loss.detach()) * args.accum_steps


def fit(
    model: nn.Module,
    task: Task,
    batches: Callable[[int], Iterator[tuple[Tensor, ...]]],
    evaluate_loss: Callable[[], float],
    args: argparse.Namespace,
    epochs: int,
    log_prefix: str = "",
) -> Fit:
    """The training loop shared by both tasks (the task supplies batches and the loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    per_epoch = math.ceil(task.batch_count(args) / args.accum_steps)
    steps = max(1, epochs * per_epoch)
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup))
    device = next(model.parameters()).device.type  # autocast where the weights are
    scaler = torch.amp.GradScaler(device, enabled=use_grad_scaler(args.amp, device))
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "step_loss": []}

    def optimizer_step() -> None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, args.clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()

    started, step = time.perf_counter(), 0
    heard = started  # a progress line at least every PROGRESS_S within an epoch
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for i, batch in enumerate(batches(epoch)):
            if losses and time.perf_counter() - heard > PROGRESS_S:
                heard = time.perf_counter()
                say(
                    f"{log_prefix}epoch {epoch}/{epochs}: batch {i}/{task.batch_count(args)} "
                    f"train loss {np.mean(losses[-50:]):.4f} ({heard - started:.0f}s)"
                )
            ramp = args.scheduled_sampling * min(1.0, step / steps)
            losses.append(accumulate(model, task, batch, ramp, args, scaler))
            if (i + 1) % args.accum_steps == 0:
                optimizer_step()
                step += 1
        if len(losses) % args.accum_steps:  # an epoch's last batches step too, rather than
            optimizer_step()  # leaking their gradient into the next epoch's first step
            step += 1
        history["step_loss"] += losses
        row = {"train_loss": float(np.mean(losses)), "val_loss": evaluate_loss()}
        for key, value in row.items():
            history[key].append(value)
        mlflow.log_metrics({f"{log_prefix}{k}": v for k, v in row.items()}, step=epoch)
        say(
            f"{log_prefix}epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f} "
            f"val loss {row['val_loss']:.4f} ({time.perf_counter() - started:.0f}s)"
        )
    return Fit(history, time.perf_counter() - started)


def run_sweep(args: argparse.Namespace, task: Task, data: Any, vocab: int) -> None:
    """Depth x width child runs: the quality / time trade-off of smaller and larger models."""
    for depth, width in args.sweep:
        child = replace_args(args, layers=depth, d_model=width, d_ff=2 * width)
        config = config_for(child, task, vocab, data.classes)
        torch.manual_seed(args.seed)
        model = build_model(config).to(data.device)
        with mlflow.start_run(run_name=f"sweep {depth}x{width}", nested=True):
            tracking.log_params({"layers": depth, "d_model": width, "epochs": args.sweep_epochs})
            result = fit(
                model,
                task,
                data.batches,
                lambda m=model: task.val_loss(m, data),
                child,
                args.sweep_epochs,
            )
            metrics = task.sweep_metrics(model, data)
            metrics.update(
                train_seconds=result.seconds, parameter_count=tracking.parameter_count(model)
            )
            mlflow.log_metrics(metrics)
            say(f"sweep {depth}x{width}: {metrics}")


def replace_args(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
    except DeviceError as exc:
        print(f"python -m training.text: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or available_cores())
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    use_tracking_server(tracking_uri, timeout_s=120, max_retries=3)
    task: Task = TASKS[args.task]
    started = time.perf_counter()
    data = task.load(args)
    data.device = device
    tokenizer = data.tokenizer
    config = config_for(args, task, tokenizer.get_vocab_size(), data.classes)
    model = build_model(config).to(device)
    trainable = freeze(model, args.freeze)
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run(run_name=f"{args.model_name} {args.layers}x{args.d_model}") as run:
        tracking.log_params(
            {
                **vars(args),
                "sweep": str(args.sweep),
                "config": config.to_dict(),
                **data.sizes(),
                "git_commit": tracking.git_commit(),
            }
        )
        mlflow.log_metrics(
            {"parameter_count": tracking.parameter_count(model), "trainable_parameters": trainable}
        )
        say(f"run {run.info.run_id}: {args.task} on {device}, {data.sizes()}, {config.to_dict()}")
        result = fit(
            model, task, data.batches, lambda: task.val_loss(model, data), args, args.epochs
        )
        metrics = task.evaluate(model, data, args)
        metrics["train_seconds"] = result.seconds
        mlflow.log_metrics(metrics)
        run_sweep(args, task, data, tokenizer.get_vocab_size())
        with tempfile.TemporaryDirectory(prefix="text-bundle-") as tmp:
            tokenizer.save(str(Path(tmp) / TOKENIZER_FILE))
            write_text_bundle(
                Path(tmp),
                model,
                config,
                Path(tmp) / TOKENIZER_FILE,
                task=f"text-{args.task}",
                name=args.model_name,
                labels=data.label_names,
                source={"run_id": run.info.run_id, "git_commit": tracking.git_commit()},
                metrics={k: v for k, v in metrics.items() if not k.startswith("baseline")},
                special_tokens=SPECIAL_TOKENS,
                input_format=task.input_format,
                **task.decoding_rules(args),
                **task.io_specs(data),
            )
            version = register(
                Path(tmp),
                args.model_name,
                alias=args.alias,
                tags={"modelplane.task": f"text-{args.task}"},
            )
    summary = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
    say(
        f"registered {args.model_name} version {version} @{args.alias}: {summary} "
        f"({time.perf_counter() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
