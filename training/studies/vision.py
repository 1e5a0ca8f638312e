"""What the vision studies share: one classify setting trained as an MLflow child run.

A setting is a list of `python -m training.classify` flags, so a study compares exactly what
the job can ship; `train_setting` runs the job's own steps (setup, seeding, data, fit,
evaluate) inside a nested run and registers nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import mlflow
from torch import nn

from training import classify as job


@dataclass
class Trained:
    """One trained setting: the job's args and setup, its data, the model and its figures."""

    name: str
    args: argparse.Namespace
    setup: job.Setup
    data: job.Data
    model: nn.Module
    metrics: dict[str, float]
    train_seconds: float
    run_id: str


def train_setting(name: str, flags: Sequence[str]) -> Trained:
    """Train `python -m training.classify FLAGS` as a child run of the active run."""
    args = job.parse_args(list(flags))
    setup = job.resolve_setup(args, None)
    job.seed_everything(args.seed)
    data = job.prepare_data(args, setup)
    model = job.initial_model(args, setup)
    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.set_tag("modelplane.setting", name)
        job.log_setup(args, setup, data, model)
        started = time.perf_counter()
        history = job.fit(model, data, args, setup.spec)
        seconds = time.perf_counter() - started
        metrics = job.evaluate(model, data, history)
        mlflow.log_metric("train_seconds", seconds)
    job.say(f"{name}: test accuracy {metrics['test_accuracy']:.2%} in {seconds:.1f}s")
    return Trained(name, args, setup, data, model, metrics, seconds, run.info.run_id)
