"""Short fine-tuning runs (pruning recovery, QAT, the sparsity study) with resumable checkpoints.

A run writes `checkpoint.safetensors` (model and optimizer tensors) and `checkpoint.json` (the
epochs done and a fingerprint of everything that shapes the result) after every epoch. A run
started again with the same fingerprint resumes after the last finished epoch and ends with
exactly the weights an uninterrupted run would have: the learning rate is a function of the
step, and shuffling and augmentation are reseeded per epoch. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training import data as digits

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CHECKPOINT = "checkpoint.safetensors"
STATE = "checkpoint.json"


@dataclass(frozen=True)
class FineTune:
    """How one fine-tuning run trains: AdamW with a per-step cosine schedule."""

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class TrainData:
    """Preprocessed training inputs, labels and the (optional) augmentation."""

    inputs: np.ndarray
    labels: np.ndarray
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def _save(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for index, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{CHECKPOINT}.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(directory / CHECKPOINT)
    (directory / f".{STATE}.tmp").write_text(json.dumps(state, indent=2))
    (directory / f".{STATE}.tmp").replace(directory / STATE)


def _resume(
    directory: Path | None, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    """Load a matching checkpoint; returns the number of epochs it had finished (0 if none)."""
    if directory is None or not (directory / STATE).is_file():
        return 0
    state = json.loads((directory / STATE).read_text())
    if state.get("fingerprint") != fingerprint or not (directory / CHECKPOINT).is_file():
        return 0
    tensors = load_file(str(directory / CHECKPOINT))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(
        {"state": slots, "param_groups": optimizer.state_dict()["param_groups"]}
    )
    return int(state["epochs_done"])


def fine_tune(
    model: nn.Module,
    data: TrainData,
    config: FineTune,
    *,
    checkpoint_dir: Path | None,
    fingerprint: str,
    say: Callable[[str], None],
    label: str,
    on_epoch_end: Callable[[int], None] | None = None,
) -> list[float]:
    """Train `model` in place for `config.epochs`, resuming from a matching checkpoint.

    Returns the mean training loss of each epoch run in this call. `on_epoch_end(epoch)` runs
    after each checkpoint is written (tests use it to simulate an interruption).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    full = fingerprint + json.dumps(asdict(config), sort_keys=True)
    done = _resume(checkpoint_dir, full, model, optimizer)
    if done:
        say(f"{label}: resuming after epoch {done}/{config.epochs} from {checkpoint_dir}")
    steps = math.ceil(len(data.labels) / config.batch_size)
    total = max(1, steps * config.epochs)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(done, config.epochs):
        started = time.perf_counter()
        torch.manual_seed(config.seed * 1000 + epoch)  # augmentation draws from the global RNG
        loader = digits.make_loader(
            data.inputs,
            data.labels,
            batch_size=config.batch_size,
            transform=data.transform,
            shuffle=True,
            seed=config.seed * 1000 + epoch,
        )
        model.train()
        loss_sum, seen = 0.0, 0
        for step, (x, y) in enumerate(loader):
            for group in optimizer.param_groups:
                progress = (epoch * steps + step) / total
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * progress))
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
        losses.append(loss_sum / max(1, seen))
        if checkpoint_dir is not None:
            _save(checkpoint_dir, model, optimizer, {"fingerprint": full, "epochs_done": epoch + 1})
        say(
            f"{label}: epoch {epoch + 1}/{config.epochs} loss {losses[-1]:.4f} "
            f"({time.perf_counter() - started:.1f}s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    recalibrate_batchnorm(model, data.inputs, config.batch_size)
    return losses


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: np.ndarray, batch_size: int = 64) -> None:
    """Recompute BatchNorm running statistics as the plain average over batches of `inputs`.

    After pruning or a short fine-tune the running statistics lag the weights (momentum 0.1
    over a few dozen steps); evaluation mode would then normalize with stale numbers.
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    if not norms:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        if len(batch) > 1:  # a single image has no batch statistics
            model(torch.from_numpy(batch))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
