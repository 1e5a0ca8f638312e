"""What every study shares: its common options, the tracking server, markdown tables, reports."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import mlflow

from shared.registration import use_tracking_server

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"


def common_args(parser: argparse.ArgumentParser, out: str) -> None:
    """Options every study takes: --quick, --out, --experiment, --threads."""
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
