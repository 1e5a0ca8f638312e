"""`make bench-export`: export the default classify model and print its table against the targets.

Needs the MLflow server (`make mlflow`, or MLFLOW_TRACKING_URI). Trains the default model first
when `classify-torch@candidate` does not exist (minutes on 2 cores). The export registers a new
`classify` version under alias `bench` (not `production`: a benchmark promotes nothing) and
prints the trade-off table; this adds the stage's wall time and the issue's speed targets.
Not a test: the numbers are what this machine gives, noisy when its cores are shared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from shared.registration import use_tracking_server
from training.export.__main__ import main as export_main

DEFAULT_SOURCE = "models:/classify-torch@candidate"
# (variant, minimum throughput vs fp32 at batch 32, max accuracy drop in points or None)
TARGETS = (
    ("int8-static", 3.0, 1.0),
    ("pruned", 3.0, 1.0),
    ("pruned-int8", 5.0, None),
    ("int8-dynamic", None, None),
)


def ensure_candidate(tracking_uri: str, source: str) -> None:
    """Train the default classify model unless `source` is registered already."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias = source.removeprefix("models:/").split("@")
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
        print(f"[bench] using {name} version {version.version} @{alias}", flush=True)
        return
    except MlflowException:
        if source != DEFAULT_SOURCE:
            raise
        print(f"[bench] no {source}: training the default model", flush=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    subprocess.run([sys.executable, "-m", "training.classify"], env=env, check=True)


def targets_table(run_id: str) -> str:
    """The issue's targets next to what the export run measured."""
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient().get_run(run_id).data.metrics
    base = metrics["fp32.throughput_ips"]
    reference = metrics["reference_accuracy"]
    lines = ["| variant | x fp32 (b32) | target | drop (pts) | target |", "|---|---|---|---|---|"]
    for name, speed, drop in TARGETS:
        if f"{name}.throughput_ips" not in metrics:
            continue
        ratio = metrics[f"{name}.throughput_ips"] / base
        lost = (reference - metrics[f"{name}.accuracy"]) * 100
        lines.append(
            f"| `{name}` | {ratio:.2f}x | {f'>= {speed:g}x' if speed else 'report'} | "
            f"{lost:+.2f} | {f'<= {drop:g}' if drop is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mlflow.tracking import MlflowClient

    parser = argparse.ArgumentParser(prog="python -m training.export.bench", description=__doc__)
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="models:/NAME@ALIAS to export")
    parser.add_argument("--name", default="classify", help="registered bundle name")
    args, rest = parser.parse_known_args(argv)  # the rest goes to the export unchanged
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    use_tracking_server(tracking_uri, timeout_s=30, max_retries=3)
    ensure_candidate(tracking_uri, args.source)
    started = time.perf_counter()
    export = ["classify", "--source", args.source, "--name", args.name, "--alias", "bench"]
    code = export_main([*export, *rest])
    seconds = time.perf_counter() - started
    print(f"\n[bench] export stage wall time: {seconds:.0f}s (target <= 600s)", flush=True)
    if code != 0:
        return code
    version = MlflowClient().get_model_version_by_alias(args.name, "bench")
    print(targets_table(version.tags["export_run_id"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
