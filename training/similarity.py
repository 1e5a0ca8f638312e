"""python -m training.similarity: train a Siamese digit encoder, evaluate it, register it.

One shared-weight encoder (a small CNN, or the classify job's ResNet-18 trunk) maps each digit
image to an L2-normalized embedding; the digit class is the identity. Training uses
pytorch-metric-learning: a triplet or contrastive loss on pairs/triplets mined in each batch
(batch-hard or semi-hard negatives) from batches that `MPerClassSampler` fills with m images per
class. Evaluation: verification ROC/AUC/EER on balanced held-out pairs, the accuracy-maximizing
threshold chosen on validation, retrieval recall@1/@5 and mAP of test queries against the
training images, and a PCA plot of the test embeddings, all logged to MLflow. Registers
`similarity-torch@candidate` (safetensors + architecture + preprocessing + threshold).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers
from torch.utils.data import DataLoader

from models import similarity as arch
from shared.media import ImageSpec
from shared.registration import register, use_tracking_server
from training import data as digits
from training import similarity_eval as ev
from training import tracking

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
LOSSES = ("triplet", "contrastive")
MINERS = ("batch-hard", "semi-hard", "none")
QUICK = {"image_size": 16, "epochs": 10, "train_limit": 300, "widths": [8, 16, 32]}
FULL = {"image_size": 16, "epochs": 30, "train_limit": None, "widths": [32, 64, 128]}
# Margins in the miners' and losses' distance: L2 between unit vectors (0 = same, 2 = opposite).
DEFAULT_MARGIN = {"triplet": 0.2, "contrastive": 1.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.similarity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--arch", choices=arch.ARCHITECTURES, default="cnn", help="encoder trunk (default cnn)")
    add("--embedding-dim", type=int, default=64)
    add("--widths", type=int_list, help="cnn stage widths (default 32,64,128; quick 8,16,32)")
    add("--image-size", type=int, help="square input size (default 16)")
    add("--channels", type=int, help="input channels (cnn 1, resnet18 3)")
    add("--loss", choices=LOSSES, default="triplet")
    add("--miner", choices=MINERS, default="semi-hard", help="negative mining in each batch")
    add("--margin", type=float, help="triplet margin (0.2) / contrastive negative margin (1.0)")
    add("--epochs", type=int, help="default 30; 10 with --quick")
    add("--m-per-class", type=int, default=8, help="images per class in each batch")
    add("--batch-size", type=int, default=80, help="a multiple of --m-per-class")
    add("--lr", type=float, default=2e-3)
    add("--weight-decay", type=float, default=1e-4)
    add("--augment", action=argparse.BooleanOptionalAction, default=True, help="affine jitter")
    add("--train-limit", type=int, help="at most this many training images (300 with --quick)")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=0, help="torch threads (0 = the cores available)")
    add("--quick", action="store_true", help="a tiny run that finishes in seconds (tests, CI)")
    add("--model-name", default="similarity-torch")
    add("--alias", default="candidate")
    add("--experiment", default="similarity")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.channels is None:
        args.channels = 3 if args.arch == "resnet18" else 1
    if args.margin is None:
        args.margin = DEFAULT_MARGIN[args.loss]
    if args.batch_size % args.m_per_class:
        p.error("--batch-size must be a multiple of --m-per-class")
    return args


def int_list(text: str) -> list[int]:
    """`8,16,32` → [8, 16, 32] (argparse type)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def say(message: str) -> None:
    print(f"[similarity] {message}", flush=True)


def build_architecture(args: argparse.Namespace) -> dict[str, Any]:
    if args.arch == "cnn":
        return arch.architecture_config(
            "cnn", args.embedding_dim, widths=args.widths, in_channels=args.channels
        )
    return arch.architecture_config("resnet18", args.embedding_dim, in_channels=args.channels)


@dataclass(frozen=True)
class Objective:
    """The pytorch-metric-learning loss, its miner (None: every pair/triplet) and what to log."""

    loss: torch.nn.Module
    miner: Any
    described: dict[str, str]

    def summary(self) -> str:
        d = self.described
        return f"{d['loss']} + {d['miner']} ({d['mining']}), {d['sampler']}"


def build_objective(args: argparse.Namespace) -> Objective:
    """The loss and miner the flags select."""
    if args.loss == "triplet":
        loss: torch.nn.Module = losses.TripletMarginLoss(margin=args.margin)
    else:
        loss = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=args.margin)
    miner: Any = None
    if args.miner == "batch-hard":
        miner = miners.BatchHardMiner()
    elif args.miner == "semi-hard":
        miner = miners.TripletMarginMiner(margin=args.margin, type_of_triplets="semihard")
    described = {
        "loss": type(loss).__name__,
        "miner": type(miner).__name__ if miner else "none",
        "mining": args.miner,
        "sampler": f"MPerClassSampler(m={args.m_per_class}, batch_size={args.batch_size})",
        "library": "pytorch-metric-learning",
        "margin": str(args.margin),
    }
    return Objective(loss, miner, described)


@dataclass
class Data:
    """Splits (train possibly limited), preprocessed once, and the fixed split's hash."""

    splits: dict[str, digits.DigitsSplit]
    inputs: dict[str, np.ndarray]
    split_hash: str


def prepare_data(args: argparse.Namespace, spec: ImageSpec) -> Data:
    splits = digits.load_splits(None)
    split_hash = digits.split_hash(splits)
    splits["train"] = digits.stratified_subset(splits["train"], args.train_limit)
    inputs = {name: digits.preprocess(s.images, spec) for name, s in splits.items()}
    return Data(splits, inputs, split_hash)


def train_loader(args: argparse.Namespace, data: Data, spec: ImageSpec) -> DataLoader:
    """Batches of `m_per_class` images per class, one pass ≈ the training set per epoch."""
    labels = data.splits["train"].labels
    sampler = samplers.MPerClassSampler(
        labels, m=args.m_per_class, batch_size=args.batch_size, length_before_new_iter=len(labels)
    )
    jitter = digits.train_augmentation(spec) if args.augment else None
    dataset = digits.TensorDigits(data.inputs["train"], labels, jitter)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)


def train_epoch(
    model: torch.nn.Module, loader: DataLoader, objective: Objective, optimizer: Any, scheduler: Any
) -> tuple[float, float]:
    """One epoch; returns (mean loss, mean mined tuples per batch)."""
    loss_fn, miner = objective.loss, objective.miner
    model.train()
    total = mined = 0.0
    batches = 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        embeddings = model(x)
        tuples = miner(embeddings, y) if miner is not None else None
        loss = loss_fn(embeddings, y, tuples)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        mined += len(tuples[0]) if tuples is not None else 0
        batches += 1
    return total / max(batches, 1), mined / max(batches, 1)


def fit(
    model: torch.nn.Module,
    data: Data,
    args: argparse.Namespace,
    spec: ImageSpec,
    objective: Objective,
) -> None:
    """Train, log each epoch, keep the weights of the best validation epoch (recall@1, AUC)."""
    loader = train_loader(args, data, spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = max(1, args.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    best: tuple[tuple[float, float], int, dict] = ((-1.0, -1.0), 0, model.state_dict())
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        loss, mined = train_epoch(model, loader, objective, optimizer, scheduler)
        val = (ev.embed(model, data.inputs["val"]), data.splits["val"].labels)
        gallery = (ev.embed(model, data.inputs["train"]), data.splits["train"].labels)
        row = {"train_loss": loss, "mined_per_batch": mined, **ev.validation_summary(val, gallery)}
        mlflow.log_metrics(row, step=epoch)
        score = (row["val_recall_at_1"], row["val_auc"])
        if score >= best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
        say(
            f"epoch {epoch}/{args.epochs}  loss {loss:.4f}  mined {mined:.0f}/batch  "
            f"val AUC {row['val_auc']:.4f} recall@1 {row['val_recall_at_1']:.2%}  "
            f"{time.perf_counter() - started:.1f}s"
        )
    model.load_state_dict(best[2])
    mlflow.log_metrics({"best_epoch": best[1], "best_val_recall_at_1": best[0][0]})


def evaluate(model: torch.nn.Module, data: Data) -> ev.Evaluation:
    """Held-out metrics, the ROC curve and the PCA projection, logged to the active run."""
    embedded = {name: ev.embed(model, inputs) for name, inputs in data.inputs.items()}
    labels = {name: split.labels for name, split in data.splits.items()}
    result = ev.evaluate(
        (embedded["val"], labels["val"]),
        (embedded["test"], labels["test"]),
        (embedded["train"], labels["train"]),
    )
    result.metrics["test_pixel_auc"] = ev.pixel_auc(data.inputs["test"], labels["test"])
    mlflow.log_metrics(result.metrics)
    ev.log_plots(result, embedded["test"], labels["test"], data.splits["test"].label_names)
    return result


def register_bundle(
    model: arch.Encoder,
    args: argparse.Namespace,
    architecture: dict,
    spec: ImageSpec,
    data: Data,
    result: ev.Evaluation,
    source: dict[str, str],
    training: dict[str, str],
) -> str:
    """Write weights + manifest and register them as `<model-name>@<alias>`."""
    keys = ("test_auc", "test_eer", "test_recall_at_1", "test_recall_at_5", "test_map")
    with tempfile.TemporaryDirectory(prefix="similarity-bundle-") as tmp:
        arch.write_torch_bundle(
            Path(tmp),
            model,
            name=args.model_name,
            architecture=architecture,
            spec=spec,
            labels=data.splits["test"].label_names,
            threshold=result.threshold,
            training=training,
            source=source,
            metrics={k: result.metrics[k] for k in keys},
        )
        tags = {
            "modelplane.task": "similarity",
            "modelplane.split_hash": data.split_hash,
            "modelplane.architecture": architecture["name"],
            "modelplane.loss": training["loss"],
            "modelplane.miner": training["mining"],
        }
        return register(Path(tmp), args.model_name, alias=args.alias, tags=tags)


def log_setup(
    args: argparse.Namespace,
    architecture: dict,
    objective: Objective,
    spec: ImageSpec,
    data: Data,
    model: torch.nn.Module,
) -> str:
    """Params (flags, architecture, loss/miner/sampler, preprocessing, data); the git commit."""
    commit = tracking.git_commit()
    tracking.log_params(
        {
            **vars(args),
            **{f"{n}_size": len(s.labels) for n, s in data.splits.items()},
            "architecture": architecture,
            "objective": objective.described,
            "preprocessing": spec.to_manifest(),
            "split_hash": data.split_hash,
            "git_commit": commit,
        }
    )
    mlflow.log_metric("parameter_count", tracking.parameter_count(model))
    return commit


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0))))
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    use_tracking_server(tracking_uri, timeout_s=120, max_retries=3)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    spec = digits.image_spec(args.image_size, args.channels)
    architecture = build_architecture(args)
    data = prepare_data(args, spec)
    model = arch.build_encoder(architecture)
    objective = build_objective(args)
    mlflow.set_experiment(args.experiment)
    started = time.perf_counter()
    tags = {"modelplane.task": "similarity", "modelplane.model_name": args.model_name}
    with mlflow.start_run(run_name=f"{args.model_name}-{args.loss}-{args.miner}", tags=tags) as run:
        commit = log_setup(args, architecture, objective, spec, data, model)
        say(
            f"run {run.info.run_id} on {tracking_uri}: {architecture['name']} → "
            f"{args.embedding_dim}-d, {objective.summary()}, {args.epochs} epochs"
        )
        fit(model, data, args, spec, objective)
        result = evaluate(model, data)
        mlflow.log_metric("train_seconds", time.perf_counter() - started)
        source = {"run_id": run.info.run_id, "git_commit": commit, "split_hash": data.split_hash}
        version = register_bundle(
            model, args, architecture, spec, data, result, source, objective.described
        )
    m = result.metrics
    say(
        f"registered {args.model_name} version {version} @{args.alias}: AUC {m['test_auc']:.4f} "
        f"(raw pixels {m['test_pixel_auc']:.4f}), "
        f"EER {m['test_eer']:.2%}, recall@1 {m['test_recall_at_1']:.2%}, recall@5 "
        f"{m['test_recall_at_5']:.2%}, mAP {m['test_map']:.4f}, threshold {result.threshold:.4f} "
        f"({time.perf_counter() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
