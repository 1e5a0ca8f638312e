"""python -m training.generate: train a class-conditional digits diffusion model and register it.

A diffusers UNet2DModel with class embeddings learns to denoise scikit-learn's real digits
(gray, 16x16 by default) under a DDPM noise schedule (cosine `squaredcos_cap_v2` or linear;
epsilon or v-prediction), with classifier-free guidance training (the label is dropped to a
null class with probability `--cond-drop`) and EMA weights. Sample grids are logged to MLflow
as PNGs during training. The EMA model is then measured: a judge CNN trained on the same split
labels generated samples (recognition rate) and gives features for a Fréchet distance to the
real test digits, across a guidance sweep and across schedulers/steps. The pipeline
(`DigitsDiffusionPipeline`, safetensors) plus a manifest becomes `generate-torch@candidate`.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from diffusers.training_utils import EMAModel
from PIL import Image

from models import diffusion as arch
from models.diffusion_bundle import write_pipeline_bundle
from shared.registration import register, use_tracking_server
from training import data as digits
from training import tracking
from training.generate_quality import build_reference, grid, measure, sample_digits

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
QUICK = {
    "image_size": 8,
    "block_channels": "16,32",
    # 192 steps on 1000 digits (~15 s on one thread): the fewest after which an independent
    # classifier recognises guided samples far above chance (tests/integration/test_generate_e2e)
    "epochs": 12,
    "train_limit": 1000,
    "judge_epochs": 2,
    "eval_per_class": 1,
    "ddpm_eval_steps": 10,
    "eval_steps": 4,
    "guidance_sweep": "0,2,7",
    "sample_every": 2,
}
FULL = {
    "image_size": 16,
    "block_channels": "32,64,64",
    "epochs": 60,
    "train_limit": None,
    "judge_epochs": 15,
    "eval_per_class": 10,
    "ddpm_eval_steps": 1000,
    "eval_steps": 25,
    "guidance_sweep": "0,1,2,4,7",
    "sample_every": 15,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--image-size", type=int, help="square size of generated digits (default 16; 8 --quick)")
    add("--block-channels", help="UNet channels per level (default 32,64,64; 16,32 --quick)")
    add("--layers-per-block", type=int, default=1)
    add("--attention", action="store_true", help="self-attention at the coarsest level")
    add("--beta-schedule", choices=arch.BETA_SCHEDULES, default="squaredcos_cap_v2")
    add("--prediction-type", choices=arch.PREDICTION_TYPES, default="epsilon")
    add("--epochs", type=int, help="default 60; 12 with --quick")
    add("--batch-size", type=int, default=64)
    add("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    add("--cond-drop", type=float, default=0.1, help="share of labels dropped to the null class")
    add("--ema-decay", type=float, default=0.999, help="EMA decay cap (warms up from 0)")
    add("--guidance-scale", type=float, default=2.0, help="the default guidance scale served")
    add("--guidance-sweep", help="guidance scales measured (default 0,1,2,4,7; 0,2,7 --quick)")
    add("--eval-per-class", type=int, help="samples per digit per measured setting (default 10)")
    add("--ddpm-eval-steps", type=int, help="DDPM reference steps (default 1000; 10 --quick)")
    add("--eval-steps", type=int, help="sampling steps of the measured settings (default 25)")
    add("--judge-epochs", type=int, help="epochs of the judge classifier (default 15)")
    add("--sample-every", type=int, help="log a sample grid every N epochs")
    add("--train-limit", type=int, help="at most this many training digits (1000 with --quick)")
    add("--seed", type=int, default=0)
    add("--threads", type=int, help="torch intra-op threads (default: the cores available)")
    add("--quick", action="store_true", help="a tiny run that finishes in seconds (tests, CI)")
    add("--model-name", default="generate-torch", help="registered model to add a version to")
    add("--alias", default="candidate", help="alias the new version gets")
    add("--experiment", default="generate", help="MLflow experiment")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.block_channels = [int(c) for c in str(args.block_channels).split(",")]
    sweep = {float(g) for g in str(args.guidance_sweep).split(",")} | {args.guidance_scale}
    args.guidance_sweep = sorted(sweep)  # the served default is always measured
    if not 0.0 <= args.cond_drop < 1.0:
        p.error("--cond-drop must be in [0, 1)")
    return args


def say(message: str) -> None:
    print(f"[generate] {message}", flush=True)


def training_inputs(args: argparse.Namespace) -> tuple[dict[str, digits.DigitsSplit], np.ndarray]:
    """The fixed split, and the (limited) train digits as (N, 1, S, S) floats in [-1, 1]."""
    splits = digits.load_splits()
    train = digits.stratified_subset(splits["train"], args.train_limit)
    spec = digits.image_spec(args.image_size, channels=1)
    splits = {**splits, "train": train}
    return splits, digits.preprocess(train.images, spec)


def log_grid(pipeline: arch.DigitsDiffusionPipeline, args: argparse.Namespace, name: str) -> None:
    """A grid (one row per digit) sampled with the served defaults, logged as a PNG artifact."""
    columns = 8
    images, _ = sample_digits(
        pipeline,
        columns,
        guidance_scale=args.guidance_scale,
        scheduler=arch.DEFAULT_SCHEDULER,
        steps=args.eval_steps,
        seed=args.seed + 10_000,
    )
    mlflow.log_image(Image.fromarray(grid(images, columns)), f"samples/{name}.png")


def fit(
    pipeline: arch.DigitsDiffusionPipeline, inputs: np.ndarray, labels: np.ndarray, args: Any
) -> EMAModel:
    """Train the UNet with CFG label dropout and EMA; returns the EMA (weights not yet copied)."""
    unet = pipeline.unet
    noise_schedule = arch.training_scheduler(args.beta_schedule, args.prediction_type)
    loader = digits.make_loader(
        inputs, labels, batch_size=args.batch_size, shuffle=True, seed=args.seed
    )
    steps = args.epochs * len(loader)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=steps, pct_start=min(0.3, 200 / steps)
    )
    ema = EMAModel(unet.parameters(), decay=args.ema_decay)
    generator = torch.Generator().manual_seed(args.seed)
    null = pipeline.num_classes
    step = 0
    for epoch in range(1, args.epochs + 1):
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        unet.train()
        for clean, y in loader:
            noise = torch.randn(clean.shape, generator=generator)
            t = torch.randint(0, arch.TRAIN_TIMESTEPS, (len(y),), generator=generator)
            drop = torch.rand(len(y), generator=generator) < args.cond_drop
            y = torch.where(drop, torch.full_like(y, null), y)
            noisy = noise_schedule.add_noise(clean, noise, t)
            target = arch.training_target(noise_schedule, clean, noise, t)
            loss = torch.nn.functional.mse_loss(unet(noisy, t, class_labels=y).sample, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            ema.step(unet.parameters())
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
        mlflow.log_metrics(
            {"train_loss": loss_sum / seen, "lr": schedule.get_last_lr()[0]}, step=epoch
        )
        say(
            f"epoch {epoch}/{args.epochs}  loss {loss_sum / seen:.4f}  step {step}/{steps}  "
            f"{time.perf_counter() - started:.1f}s"
        )
        if epoch % args.sample_every == 0 or epoch == args.epochs:
            name = f"epoch_{epoch:03d}"
            with_ema(pipeline, ema, lambda name=name: log_grid(pipeline, args, name))
    return ema


def with_ema(pipeline: arch.DigitsDiffusionPipeline, ema: EMAModel, action: Any) -> None:
    """Run `action` with the EMA weights in the UNet, then put the training weights back."""
    params = list(pipeline.unet.parameters())
    ema.store(params)
    ema.copy_to(params)
    pipeline.unet.eval()
    try:
        action()
    finally:
        ema.restore(params)


def register_pipeline(
    pipeline: arch.DigitsDiffusionPipeline,
    args: argparse.Namespace,
    source: dict[str, str],
    metrics: dict[str, float],
) -> str:
    """save_pretrained (safetensors) + manifest → a new version of `<model-name>@<alias>`."""
    with tempfile.TemporaryDirectory(prefix="generate-bundle-") as tmp:
        write_pipeline_bundle(
            Path(tmp),
            pipeline,
            name=args.model_name,
            generation={
                "guidance_scale": args.guidance_scale,
                "scheduler": arch.DEFAULT_SCHEDULER,
                "steps": 25,
            },
            source=source,
            metrics=metrics,
        )
        tags = {"modelplane.task": "generate", "modelplane.split_hash": source["split_hash"]}
        return register(Path(tmp), args.model_name, alias=args.alias, tags=tags)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0))))
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    use_tracking_server(tracking_uri, timeout_s=120, max_retries=3)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    splits, inputs = training_inputs(args)
    config = arch.unet_config(
        args.image_size,
        block_out_channels=args.block_channels,
        layers_per_block=args.layers_per_block,
        attention=args.attention,
    )
    pipeline = arch.build_pipeline(
        arch.build_unet(config), args.beta_schedule, args.prediction_type
    )
    pipeline.set_progress_bar_config(disable=True)
    mlflow.set_experiment(args.experiment)
    started = time.perf_counter()
    with mlflow.start_run(run_name=args.model_name, tags={"modelplane.task": "generate"}) as run:
        commit = tracking.git_commit()
        split_hash = digits.split_hash(digits.load_splits())
        tracking.log_params(
            {**vars(args), "unet": config, "split_hash": split_hash, "git_commit": commit}
        )
        mlflow.log_metric("parameter_count", tracking.parameter_count(pipeline.unet))
        say(
            f"run {run.info.run_id} on {tracking_uri}: UNet {args.block_channels} "
            f"{tracking.parameter_count(pipeline.unet) / 1e6:.2f}M params, "
            f"{args.image_size}x{args.image_size}, {len(inputs)} digits, {args.epochs} epochs, "
            f"{args.beta_schedule}, {args.prediction_type}"
        )
        ema = fit(pipeline, inputs, splits["train"].labels, args)
        ema.copy_to(pipeline.unet.parameters())
        pipeline.unet.eval()
        train_seconds = time.perf_counter() - started
        mlflow.log_metric("train_seconds", train_seconds)
        say(f"trained in {train_seconds:.0f}s; training the judge classifier")
        reference = build_reference(
            digits.load_splits(), args.image_size, args.judge_epochs, args.seed, args.eval_per_class
        )
        mlflow.log_metrics(
            {"judge_test_accuracy": reference.judge_accuracy, "frechet_real_floor": reference.floor}
        )
        say(
            f"judge test accuracy {reference.judge_accuracy:.2%}; Fréchet real train vs test "
            f"{reference.floor:.2f} (the floor)"
        )
        rows = measure(pipeline, reference, args)
        default = next(r for r in rows if r["setting"] == f"guidance_{args.guidance_scale:g}")
        metrics = {
            "recognized": default["recognized"],
            "frechet": default["frechet"],
            "judge_test_accuracy": reference.judge_accuracy,
            "frechet_real_floor": reference.floor,
        }
        mlflow.log_metrics({"recognized_default": metrics["recognized"]})
        source = {"run_id": run.info.run_id, "git_commit": commit, "split_hash": split_hash}
        version = register_pipeline(pipeline, args, source, metrics)
    say(
        f"registered {args.model_name} version {version} @{args.alias}: recognized "
        f"{metrics['recognized']:.1%} at guidance {args.guidance_scale:g} "
        f"(DPM-Solver++, {args.eval_steps} "
        f"steps), Fréchet {metrics['frechet']:.2f} ({time.perf_counter() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
