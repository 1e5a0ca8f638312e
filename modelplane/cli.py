"""`modelplane <command>`: the one command of the platform (click; `--help` on each).

Each command that runs a service, a job or a benchmark replaces this process with that
module (`os.execv`): its output, exit status and signals are the module's own, so
`modelplane serve classify` in a container is the service itself, PID 1 included.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from services.catalog import SERVICES, entry
from training.all import STEPS
from training.studies import STUDIES

ROOT = Path(__file__).resolve().parents[1]
TASKS = tuple(STEPS["train"])
DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
#: `modelplane bench <what>`: the module each benchmark runs
BENCHES = {
    "serve": "loadtests.bench_serve",
    "export": "training.export.bench",
    "runtimes": "training.export.bench_runtimes",
    "similarity": "scripts.bench_similarity",
    "text": "scripts.bench_text",
    "observe": "loadtests.bench_observe",
    "rollout": "loadtests.bench_rollout",
}
#: the options after TASK/WHAT go to the job, `--help` included
PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit status 1; never a traceback."""
    raise click.ClickException(message)


def run_module(module: str, args: Sequence[str], env: dict[str, str] | None = None) -> NoReturn:
    """Become `python -m module args`. The repository root is on the path, so the load-test
    and benchmark modules (not installed packages) are found from any directory."""
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), environment.get("PYTHONPATH", "")) if p
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *args], environment)


def registry_uri() -> str:
    """MLFLOW_TRACKING_URI, else the local server `modelplane mlflow` runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def require_registry(uri: str) -> None:
    """Fail in one line when an http(s) MLflow server does not answer its /health."""
    if not uri.startswith(("http://", "https://")):
        return  # a file or database store: mlflow opens it itself
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            return
    except urllib.error.HTTPError:
        return  # it answered: an auth proxy or an older server without /health
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(
            f"cannot reach the MLflow registry at {uri} ({reason}); start one with "
            "`modelplane mlflow` or point MLFLOW_TRACKING_URI at yours"
        )


def port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound now (e.g. "Address already in use"), or None."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def require_free_port(host: str, port: int) -> None:
    if reason := port_in_use(host, port):
        fail(f"port {port} on {host} is in use ({reason}); stop what runs there or pass --port")


def study_summary(module: str) -> str:
    """The first line of a study module's docstring, read without importing it (torch)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text()))
    return (doc or "").splitlines()[0] if doc else ""


def choose(ctx: click.Context, value: str | None, choices: Sequence[str], what: str) -> str:
    """The TASK/WHAT argument of a pass-through command; no argument or --help shows help."""
    if value is None or value in ("-h", "--help"):
        click.echo(ctx.get_help())
        ctx.exit(0)
    if value not in choices:
        fail(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelplane")
def main() -> None:
    """modelplane: train PyTorch models, register them in MLflow, export verified ONNX
    bundles and serve them over REST.

    \b
    Start here:
      modelplane up              the whole platform on this machine (MLflow + five services)
      modelplane serve classify  one service, from the registry
      modelplane models          what is registered, and what each running service serves
    """


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("service", type=click.Choice([s.name for s in SERVICES]))
@click.option("--host", envvar="HOST", default="127.0.0.1", show_default=True,
              help="address to bind (env HOST)")  # fmt: skip
@click.option("--port", type=int, envvar="PORT", help="default: the service's own (env PORT)")
@click.option("--model-uri", help="models:/<name>@<alias> or models:/<name>/<version> "
              "(env MODEL_URI; default @production of the service's model)")  # fmt: skip
@click.option("--variant", help="bundle variant to serve, e.g. fp32 or int8-static "
              "(env MODEL_VARIANT; default the bundle's)")  # fmt: skip
@click.option("--tracking-uri", help="the MLflow registry (env MLFLOW_TRACKING_URI)")
@click.option("--threads", type=int, help="onnxruntime intra-op threads "
              "(env ONNX_INTRA_OP_THREADS; default sized from the CPUs)")  # fmt: skip
@click.option("--reuse-port", is_flag=True, help="share the port with other processes "
              "(SO_REUSEPORT; env REUSE_PORT)")  # fmt: skip
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="any other setting by its name, e.g. --set max_batch_size=16 (the "
              "environment variable KEY; README.md lists them); repeatable")  # fmt: skip
def serve(
    service: str,
    host: str,
    port: int | None,
    model_uri: str | None,
    variant: str | None,
    tracking_uri: str | None,
    threads: int | None,
    reuse_port: bool,
    assignments: tuple[str, ...],
) -> None:
    """Serve one service (from the registry or the verified cache).

    SERVICE loads its model, verifies and warms it up, and answers on HOST:PORT once ready;
    SIGTERM drains and stops it.
    """
    port = port or entry(service).port
    env = dict(os.environ)
    for key, value in (
        ("MODEL_URI", model_uri),
        ("MODEL_VARIANT", variant),
        ("MLFLOW_TRACKING_URI", tracking_uri),
        ("ONNX_INTRA_OP_THREADS", None if threads is None else str(threads)),
    ):
        if value is not None:
            env[key] = value
    if assignments:
        known = settings_names(service)
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep or key.lower() not in known:
                fail(f"--set {assignment!r}: expected KEY=VALUE with KEY one of {service}'s "
                     f"settings: {', '.join(sorted(known))}")  # fmt: skip
            env[key.upper()] = value
    if not reuse_port:
        require_free_port(host, port)
    args = ["--host", host, "--port", str(port), *(["--reuse-port"] if reuse_port else [])]
    run_module(entry(service).module, args, env)


def settings_names(service: str) -> set[str]:
    """The setting names of a service's settings class (imports the service's module)."""
    return set(entry(service).service_class().settings_class.model_fields)


def run_stage(ctx: click.Context, stage: str, task: str | None, args: tuple[str, ...]) -> None:
    """Become TASK's job of `stage` (training.all's table), or every task's with `all`."""
    task = choose(ctx, task, (*TASKS, "all"), "task")
    if "--help" not in args and "-h" not in args:
        require_registry(registry_uri())
    if task == "all":
        run_module("training.all", [stage, *args])
    module, *fixed = STEPS[stage][task]
    run_module(module, [*fixed, *args])


@main.command(context_settings=PASSTHROUGH)
@click.argument("task", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def train(ctx: click.Context, task: str | None, args: tuple[str, ...]) -> None:
    """Train a task's model and register it @candidate.

    TASK is one of classify, similarity, text-classify, text-generate, generate, or all (each
    in turn). Options after TASK go to the job: `modelplane train classify --help` lists
    them; --quick trains a tiny model in seconds.
    """
    run_stage(ctx, "train", task, args)


@main.command(context_settings=PASSTHROUGH)
@click.argument("task", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def export(ctx: click.Context, task: str | None, args: tuple[str, ...]) -> None:
    """Export a task's @candidate, gate it, move @production.

    The export stage turns TASK's @candidate into verified ONNX bundles; TASK as for
    `train`. Options after TASK go to the export stage: `modelplane export classify --help`
    lists them (variants, pruning, quantization, the gates).
    """
    run_stage(ctx, "export", task, args)


@main.command(context_settings=PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def rollout(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Promote a challenger or roll it back, from its canary and shadow metrics.

    Watches the per-version metrics (Prometheus or the replicas' /metrics), compares the
    challenger with production against thresholds, then moves @production or removes
    @challenger and tags the version with why. `modelplane rollout --help` lists the options;
    docs/rollouts.md explains the whole rollout.
    """
    if not args or args[0] in ("-h", "--help"):
        from modelplane.rollout import build_parser

        click.echo(f"{ctx.get_help()}\n\nThe gate's options:\n\n{build_parser().format_help()}")
        return
    run_module("modelplane.rollout", args)


@main.command(context_settings=PASSTHROUGH)
@click.argument("what", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, what: str | None, args: tuple[str, ...]) -> None:
    """Run a benchmark and print its measured figures.

    \b
    WHAT:
      serve       classify over HTTP (wrk) beside raw onnxruntime, same model file
      export      the export stage's accuracy / latency / size trade-off table
      runtimes    onnxruntime vs TorchScript / torch.ao int8 speed, same net and threads
      similarity  AUC, EER, recall@k, mAP, batch-32 throughput, search latency
      text        tokens/s with and without the KV cache, TTFT, fp32 vs int8
    Options after WHAT go to the benchmark (`modelplane bench serve --help`).
    """
    run_module(BENCHES[choose(ctx, what, tuple(BENCHES), "benchmark")], args)


@main.command(context_settings=PASSTHROUGH)
@click.argument("name", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def study(ctx: click.Context, name: str | None, args: tuple[str, ...]) -> None:
    """Run a course study: small models side by side, one MLflow parent run, a table.

    NAME is one of the studies below; options after NAME go to the study (`modelplane study
    NAME --help`); --quick runs it in seconds. Studies log to MLflow (MLFLOW_TRACKING_URI)
    and register nothing.
    """
    name = choose(ctx, name, tuple(sorted(STUDIES)), "study")
    if "--help" not in args and "-h" not in args:
        require_registry(registry_uri())
    run_module(STUDIES[name], args)


study.help = (
    inspect.cleandoc(study.help or "")
    + "\n\n\b\nNAME:\n"
    + "".join(f"  {name:<14}{study_summary(module)}\n" for name, module in sorted(STUDIES.items()))
)


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--store", type=click.Path(path_type=Path), default=Path(".modelplane/mlflow"),
              show_default=True, help="SQLite database and artifacts live here")  # fmt: skip
def mlflow(host: str, port: int, store: Path) -> None:
    """Run the MLflow tracking server and model registry.

    A SQLite store and local artifacts under STORE; what `make mlflow` runs.
    """
    from modelplane.platform import mlflow_command

    require_free_port(host, port)
    store.mkdir(parents=True, exist_ok=True)
    cmd = mlflow_command(store.resolve(), host, port)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tracking-uri", help="the MLflow registry (env MLFLOW_TRACKING_URI)")
@click.option("--versions", type=int, default=3, show_default=True,
              help="versions shown per model, newest first (0: all)")  # fmt: skip
def models(tracking_uri: str | None, versions: int) -> None:
    """List registered models and what each running service serves.

    Versions, aliases, export gates and variants from the registry; then each service on this
    machine (its own port, or <SERVICE>_URL) and the model version it serves.
    """
    from modelplane.listing import models_report

    uri = tracking_uri or registry_uri()
    require_registry(uri)
    click.echo(models_report(uri, versions))


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--full", is_flag=True, help="full trainings for every task (tens of minutes), "
              "not quick ones for all but classify")  # fmt: skip
@click.option("--quick", is_flag=True, help="tiny trainings for every task, classify too "
              "(a smoke run in a few minutes)")  # fmt: skip
@click.option("--retrain", is_flag=True, help="train and export even what is registered")
@click.option("--no-wait", is_flag=True, help="stop everything after the requests")
@click.option("--mlflow-port", type=int, default=5000, show_default=True)
def up(full: bool, quick: bool, retrain: bool, no_wait: bool, mlflow_port: int) -> None:
    """Bring the whole platform up on this machine.

    MLflow, then training and export of what the registry lacks, then all five services, one
    real request to each; Ctrl-C stops everything.

    A second run reuses the registered models and is up in seconds. Its state lives in
    .modelplane/ (MLflow store, model cache, logs).
    """
    from modelplane.platform import Platform

    if full and quick:
        fail("--full and --quick contradict each other; pick one")
    Platform(mlflow_port=mlflow_port).up(quick=quick, full=full, retrain=retrain, wait=not no_wait)


main.add_command(
    click.Command(
        "demo",
        params=up.params,
        callback=up.callback,
        help="The same as `up` (what `make demo` runs).",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
)
