"""What the text studies share: `training.text`'s own steps (args, data, model, fit) run as a
named MLflow child run, registering nothing, plus a memory measure and a line plot.

A setting is `python -m training.text` flags plus architecture changes (`TextConfig` fields),
so a study compares what the job can train.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn

from models.text import TextConfig, build_model, freeze
from training import text as job
from training import tracking
from training.text_tasks import TASKS, Task, TextData


def text_args(task: str, quick: bool, *flags: str) -> argparse.Namespace:
    """`python -m training.text --task TASK [--quick] FLAGS` as parsed by the job."""
    return job.parse_args(["--task", task, *(["--quick"] if quick else []), *flags])


def load(args: argparse.Namespace) -> TextData:
    """The task's splits and tokenizer (once per study: every setting trains on the same)."""
    job.say(f"loading {args.task} data")
    return TASKS[args.task].load(args)


@dataclass
class Trained:
    """One trained setting: its model, config, losses, seconds, test metrics and child run."""

    name: str
    model: nn.Module
    config: TextConfig
    fit: job.Fit
    metrics: dict[str, float]
    run_id: str


def train(
    name: str,
    args: argparse.Namespace,
    data: TextData,
    changes: dict[str, Any] | None = None,
    init: Callable[[nn.Module], None] | None = None,
    epochs: int | None = None,
) -> Trained:
    """Train one setting as a child run of the active run (args: the job's, `changes`: fields
    of the model's TextConfig, `init`: re-initialises the built model)."""
    task: Task = TASKS[args.task]
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    data.seed = args.seed  # the batch order follows the seed too
    config = job.config_for(args, task, data.tokenizer.get_vocab_size(), data.classes)
    config = dataclasses.replace(config, **(changes or {}))
    model = build_model(config)
    if init is not None:
        init(model)
    freeze(model, args.freeze)
    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.set_tag("modelplane.setting", name)
        tracking.log_params({"setting": name, "seed": args.seed, "config": config.to_dict()})
        fit = job.fit(
            model,
            task,
            data.batches,
            lambda: task.val_loss(model, data),
            args,
            epochs or args.epochs,
        )
        metrics = task.sweep_metrics(model, data)  # test accuracy or perplexity
        mlflow.log_metrics({**metrics, "train_seconds": fit.seconds})
    job.say(f"{name}: {metrics} in {fit.seconds:.1f}s")
    return Trained(name, model, config, fit, metrics, run.info.run_id)


def finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def allocated_bytes(work: Callable[[], object]) -> int:
    """Bytes the CPU allocator handed out while `work` ran (torch's profiler): what one call
    costs in memory, whatever the allocator caches."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    return int(sum(max(0, e.self_cpu_memory_usage) for e in prof.events()))


def seconds_of(work: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `work` over `repeats` calls, after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    artifact: str,
    log: bool = False,
) -> None:
    """Curves (name → xs, ys) on one axis, logged to the active run as `artifact`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=name)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tracking.log_figure(fig, artifact)
