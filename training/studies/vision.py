"""What the vision studies share: one classify setting trained as an MLflow child run, tables.

A setting is a list of `python -m training.classify` flags, so a study compares exactly what
the job can ship; `train_setting` runs the job's own steps (setup, seeding, data, fit,
evaluate) inside a nested run and registers nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
from torch import nn

from shared.registration import use_tracking_server
from training import classify as job

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"


def common_args(parser: argparse.ArgumentParser, out: str) -> None:
    """Options every vision study takes: --quick, --out, --experiment, --threads."""
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny settings that finish in seconds (tests)")
    add("--out", type=Path, default=Path(f".modelplane/studies/{out}"), help="table and plots")
    add("--experiment", default="studies", help="MLflow experiment of the parent run")
    add("--threads", type=int, default=0, help="torch threads (0 = the cores available)")


def connect(threads: int, experiment: str) -> str:
    """Set torch threads, reach the tracking server (MLFLOW_TRACKING_URI), pick the experiment."""
    import torch

    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0))))
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    use_tracking_server(tracking_uri, timeout_s=120, max_retries=3)
    mlflow.set_experiment(experiment)
    return tracking_uri


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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (cells as given, str() of each)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(out: Path, name: str, text: str) -> Path:
    """Write the study's markdown to OUT/NAME, log it to the active run, print it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(text)
    mlflow.log_artifact(str(path))
    print(text, flush=True)
    return path
