"""python -m training.classify: train a digits classifier, log it to MLflow, register it.

Trains a torchvision ResNet-18 (or a DenseNet-BC: growth rate, bottleneck, block layout and
transition compression are flags) on scikit-learn's real 8x8 digits, from scratch, from
torchvision ImageNet weights (`--weights`) or from another registered classify model's backbone
(`--init-from`), optionally easy-to-hard (`--curriculum`) and with a torchvision v2 augmentation
policy (`--augment`); logs params, per-epoch curves, test metrics and plots; and
registers `<model-name>@<alias>` (default `classify-torch@candidate`): safetensors weights plus
the architecture dict, preprocessing and labels that export and the services rebuild from.
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
from torch import nn

from models import classify as arch
from shared.errors import BundleError, RegistryError
from shared.media import ImageSpec
from shared.registration import register, use_tracking_server
from shared.registry import RegistryClient
from training import data as digits
from training import tracking

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
QUICK = {"image_size": 16, "epochs": 2, "train_limit": 300, "batch_size": 32}
FULL = {"image_size": 32, "epochs": 10, "train_limit": None, "batch_size": 64}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.classify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--arch", choices=arch.ARCHITECTURES, help="default resnet18")
    add("--weights", help="torchvision weights to fine-tune: ResNet18_Weights.IMAGENET1K_V1")
    add("--init-from", help="start from a registered classify model's backbone: models:/NAME@ALIAS")
    add("--classes", type=digit_list, help="digit subset, e.g. 0,1,2,3,4 (default: all ten)")
    add("--image-size", type=int, help="square input size (default 32; 16 with --quick)")
    add("--channels", type=int, default=3, help="input channels (the gray plane repeated)")
    add("--epochs", type=int, help="default 10; 2 with --quick")
    add("--batch-size", type=int, help="default 64; 32 with --quick")
    add("--lr", type=float, default=2e-3, help="peak learning rate (the head's)")
    add("--backbone-lr-scale", type=float, default=1.0, help="backbone lr = lr x this")
    add("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    add("--scheduler", choices=("cosine", "onecycle"), default="cosine")
    add("--label-smoothing", type=float, default=0.0)
    add("--freeze-backbone", action="store_true", help="train only the head")
    add(
        "--unfreeze-every",
        type=int,
        metavar="N",
        help="start frozen; every N epochs unfreeze one more block group, deepest first",
    )
    dense = p.add_argument_group("DenseNet (--arch densenet)").add_argument
    dense("--growth-rate", type=int, help="channels each dense layer adds (k; default 12)")
    dense("--bn-size", type=int, help="bottleneck width in multiples of k (default 4)")
    dense("--block-config", type=int_list, help="layers per dense block (default 6,6,6)")
    dense("--num-init-features", type=int, help="stem channels (default 24)")
    dense("--compression", type=float, help="share of channels a transition keeps (default 0.5)")
    add("--augment", choices=digits.AUGMENTATIONS, default="affine", help="training augmentation")
    add("--curriculum", action="store_true", help="easy to hard by a reference model's loss")
    add(
        "--curriculum-start",
        type=float,
        default=0.3,
        help="share of the easiest examples the curriculum starts with (all from mid-training)",
    )
    add("--train-limit", type=int, help="at most this many training images (300 with --quick)")
    add("--seed", type=int, default=0, help="seeds weight init, shuffling and augmentation")
    add("--quick", action="store_true", help="a tiny run that finishes in seconds (tests, CI)")
    add("--model-name", default="classify-torch", help="registered model to add a version to")
    add("--alias", default="candidate", help="alias the new version gets")
    add("--experiment", default="classify", help="MLflow experiment")
    add(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("MODEL_CACHE_DIR", ".modelplane/cache")),
        help="where --init-from downloads its source model (env MODEL_CACHE_DIR)",
    )
    args = p.parse_args(argv)
    if args.weights and args.init_from:
        p.error("--weights and --init-from both initialize the backbone; pick one")
    if args.init_from and (args.arch or args.image_size or args.channels != 3):
        p.error("--init-from keeps the source model's architecture and input size")
    if args.unfreeze_every is not None and args.unfreeze_every < 1:
        p.error("--unfreeze-every needs a positive number of epochs")
    if densenet_settings(args) and (args.arch != "densenet" or args.weights or args.init_from):
        p.error("the DenseNet flags shape a fresh --arch densenet (not --weights / --init-from)")
    if not 0.0 < args.curriculum_start <= 1.0:
        p.error("--curriculum-start is a fraction in (0, 1]")
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def int_list(text: str) -> list[int]:
    """`6,6,6` as a list of ints (argparse type)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def densenet_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The DenseNet flags given, as `architecture_config` overrides."""
    keys = ("growth_rate", "bn_size", "block_config", "num_init_features", "compression")
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


def digit_list(text: str) -> list[int]:
    """`0,1,2` as a list of digits (argparse type)."""
    try:
        return digits.normalize_classes([int(part) for part in text.split(",")])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def say(message: str) -> None:
    print(f"[classify] {message}", flush=True)


@dataclass
class Setup:
    """What a run trains: architecture, preprocessing, digits, and where the weights start."""

    architecture: dict[str, Any]
    spec: ImageSpec
    classes: list[int]
    source_weights: dict[str, torch.Tensor] | None = None
    source_run_id: str | None = None


def resolve_setup(args: argparse.Namespace, registry: RegistryClient | None) -> Setup:
    """Architecture and ImageSpec from the flags, or inherited from the `--init-from` model."""
    classes = args.classes or digits.normalize_classes(None)
    if args.init_from:
        if registry is None:
            raise ValueError("--init-from needs the model registry")
        source = registry.fetch(args.init_from, args.cache_dir)
        architecture = {**source.bundle.manifest["architecture"], "num_classes": len(classes)}
        spec = ImageSpec.from_manifest(source.bundle.preprocessing)
        say(f"initializing from {args.init_from}: version {source.version}, run {source.run_id}")
        weights = arch.bundle_weights(source.bundle)
        return Setup(architecture, spec, classes, weights, source.run_id)
    spec = digits.image_spec(args.image_size, args.channels)
    if args.weights:
        architecture = arch.pretrained_architecture(args.weights, len(classes), args.channels)
        if args.arch and args.arch != architecture["name"]:
            raise ValueError(f"{args.weights} are {architecture['name']} weights, not {args.arch}")
    else:
        name = args.arch or "resnet18"
        architecture = arch.architecture_config(
            name, len(classes), in_channels=args.channels, **densenet_settings(args)
        )
    return Setup(architecture, spec, classes)


def initial_model(args: argparse.Namespace, setup: Setup) -> nn.Module:
    """A fresh net, its backbone from torchvision weights or the source model when asked."""
    model = arch.build_model(setup.architecture)
    if args.weights:
        arch.load_pretrained(model, args.weights)
    elif setup.source_weights is not None:
        arch.copy_backbone(model, setup.source_weights)
    return model


@dataclass
class Data:
    """The splits (train possibly limited), preprocessed once, and the split's hash."""

    splits: dict[str, digits.DigitsSplit]
    inputs: dict[str, np.ndarray]
    split_hash: str


def prepare_data(args: argparse.Namespace, setup: Setup) -> Data:
    splits = digits.load_splits(setup.classes)
    split_hash = digits.split_hash(splits)  # of the fixed split, so export can check it
    splits["train"] = digits.stratified_subset(splits["train"], args.train_limit)
    inputs = {name: digits.preprocess(s.images, setup.spec) for name, s in splits.items()}
    return Data(splits, inputs, split_hash)


def predict(model: nn.Module, inputs: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Logits for preprocessed inputs, in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        batches = range(0, len(inputs), batch_size)
        return torch.cat([model(torch.from_numpy(inputs[i : i + batch_size])) for i in batches])


def optimizer_and_schedule(
    model: nn.Module, args: argparse.Namespace, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with head and backbone groups, and a learning-rate schedule stepped per batch."""
    groups = arch.param_groups(
        model, lr=args.lr, backbone_lr_scale=args.backbone_lr_scale, weight_decay=args.weight_decay
    )
    optimizer = torch.optim.AdamW(groups)
    if args.scheduler == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, peaks, total_steps=steps)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)


def train_epoch(
    model: nn.Module, loader: Any, criterion: nn.Module, optimizer: Any, scheduler: Any
) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, accuracy)."""
    seen = correct = 0
    loss_sum = 0.0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / seen, correct / seen


def fit(model: nn.Module, data: Data, args: argparse.Namespace, spec: ImageSpec) -> dict[str, list]:
    """Train, log each epoch, and keep the weights of the best validation epoch."""
    train = data.splits["train"]
    curriculum = None
    if args.curriculum:
        scores = digits.difficulty(train.images, train.labels)
        curriculum = digits.CurriculumSampler(
            scores, epochs=args.epochs, start=args.curriculum_start, seed=args.seed
        )
    loader = digits.make_loader(
        data.inputs["train"],
        train.labels,
        batch_size=args.batch_size,
        transform=digits.train_augmentation(spec, args.augment),
        shuffle=True,
        seed=args.seed,
        sampler=curriculum,
    )
    optimizer, scheduler = optimizer_and_schedule(model, args, args.epochs * len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    val_labels = torch.from_numpy(data.splits["val"].labels)
    groups = len(arch.block_groups(model))
    history: dict[str, list] = {}
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        count = arch.trainable_group_count(
            epoch - 1,
            groups,
            freeze_backbone=args.freeze_backbone,
            unfreeze_every=args.unfreeze_every,
        )
        thawed = arch.set_trainable_groups(model, count)
        if curriculum is not None:
            curriculum.set_epoch(epoch - 1)
            mlflow.log_metric("curriculum_pool", curriculum.pool_size(), step=epoch)
        arch.train_mode(model)
        train_loss, train_accuracy = train_epoch(model, loader, criterion, optimizer, scheduler)
        val_logits = predict(model, data.inputs["val"])
        row = {
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": float(criterion(val_logits, val_labels)),
            "val_accuracy": float((val_logits.argmax(1) == val_labels).float().mean()),
        }
        mlflow.log_metrics({**row, "lr": optimizer.param_groups[-1]["lr"]}, step=epoch)
        for key, value in row.items():
            history.setdefault(key, []).append(value)
        if row["val_accuracy"] >= best[0]:
            best = (row["val_accuracy"], epoch, copy.deepcopy(model.state_dict()))
        training = "all" if count == groups else "+".join(["head", *thawed[::-1]])
        say(
            f"epoch {epoch}/{args.epochs}  train loss {train_loss:.4f} acc {train_accuracy:.2%}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%}  "
            f"training {training}  {time.perf_counter() - started:.1f}s"
        )
    model.load_state_dict(best[2])
    mlflow.log_metrics({"best_epoch": best[1], "best_val_accuracy": best[0]})
    return history


def evaluate(model: nn.Module, data: Data, history: dict[str, list]) -> dict[str, float]:
    """Test metrics, confusion matrix and learning curves, logged to the active run."""
    test = data.splits["test"]
    predicted = predict(model, data.inputs["test"]).argmax(1).numpy()
    metrics = tracking.classification_metrics(test.labels, predicted, test.label_names, "test")
    # the floor: always answering the most frequent training class
    majority = np.bincount(data.splits["train"].labels).argmax()
    metrics["test_majority_accuracy"] = float(np.mean(test.labels == majority))
    mlflow.log_metrics(metrics)
    matrix = tracking.confusion_matrix_figure(test.labels, predicted, test.label_names)
    tracking.log_figure(matrix, "plots/confusion_matrix.png")
    tracking.log_figure(tracking.learning_curve_figure(history), "plots/learning_curve.png")
    return metrics


def register_bundle(
    model: nn.Module,
    args: argparse.Namespace,
    setup: Setup,
    data: Data,
    source: dict[str, str],
    metrics: dict[str, float],
) -> str:
    """Write weights + manifest and register them as a new version of `<model-name>@<alias>`."""
    with tempfile.TemporaryDirectory(prefix="classify-bundle-") as tmp:
        arch.write_torch_bundle(
            Path(tmp),
            model,
            name=args.model_name,
            architecture=setup.architecture,
            spec=setup.spec,
            classes=setup.classes,
            labels=data.splits["test"].label_names,
            source=source,
            metrics={
                "test_accuracy": metrics["test_accuracy"],
                "macro_f1": metrics["test_macro_f1"],
            },
        )
        tags = {
            "modelplane.task": "classify",
            "modelplane.split_hash": data.split_hash,
            "modelplane.architecture": setup.architecture["name"],
        }
        return register(Path(tmp), args.model_name, alias=args.alias, tags=tags)


def run_tags(args: argparse.Namespace, setup: Setup) -> dict[str, str]:
    """Run tags; `--init-from` links this run to the source model's run."""
    tags = {"modelplane.task": "classify", "modelplane.model_name": args.model_name}
    if args.init_from:
        tags["modelplane.init_from"] = args.init_from
        tags["modelplane.parent_run_id"] = setup.source_run_id or "unknown"
    if args.weights:
        tags["modelplane.weights"] = args.weights
    return tags


def log_setup(args: argparse.Namespace, setup: Setup, data: Data, model: nn.Module) -> str:
    """Params (flags, architecture, preprocessing, data), cost metrics; returns the git commit."""
    commit = tracking.git_commit()
    sizes = {f"{name}_size": len(split.labels) for name, split in data.splits.items()}
    flags = {k: v for k, v in vars(args).items() if k != "cache_dir"}
    tracking.log_params(
        {
            **flags,
            **sizes,
            "architecture": setup.architecture,
            "preprocessing": setup.spec.to_manifest(),
            "classes": setup.classes,
            "split_hash": data.split_hash,
            "git_commit": commit,
        }
    )
    shape = (setup.spec.channels, setup.spec.height, setup.spec.width)
    mlflow.log_metrics(
        {
            "parameter_count": tracking.parameter_count(model),
            "flops_per_image": tracking.flops_per_image(model, shape),
        }
    )
    return commit


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: weight init, shuffling and augmentation follow `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    registry = use_tracking_server(tracking_uri, timeout_s=120, max_retries=3)
    try:
        setup = resolve_setup(args, registry)
    except (RegistryError, BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seed_everything(args.seed)
    data = prepare_data(args, setup)
    model = initial_model(args, setup)
    mlflow.set_experiment(args.experiment)
    started = time.perf_counter()
    run_name = f"{args.model_name}-{setup.architecture['name']}"
    with mlflow.start_run(run_name=run_name, tags=run_tags(args, setup)) as run:
        commit = log_setup(args, setup, data, model)
        sizes = " / ".join(f"{len(s.labels)} {n}" for n, s in data.splits.items())
        say(
            f"run {run.info.run_id} on {tracking_uri}: {setup.architecture['name']}, "
            f"classes {setup.classes}, input {setup.spec.height}x{setup.spec.width}x"
            f"{setup.spec.channels}, {sizes}, {args.epochs} epochs"
        )
        history = fit(model, data, args, setup.spec)
        metrics = evaluate(model, data, history)
        mlflow.log_metric("train_seconds", time.perf_counter() - started)
        source = {"run_id": run.info.run_id, "git_commit": commit, "split_hash": data.split_hash}
        version = register_bundle(model, args, setup, data, source, metrics)
    say(
        f"registered {args.model_name} version {version} @{args.alias}: test accuracy "
        f"{metrics['test_accuracy']:.2%} (majority class {metrics['test_majority_accuracy']:.2%}), "
        f"macro F1 {metrics['test_macro_f1']:.4f} "
        f"({time.perf_counter() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
