"""`modelplane up` (and `make demo`): the whole platform as supervised local processes.

MLflow, then every task's training and export that the registry does not hold yet (a second
run reuses them), then the five services; each gets a real request, and the answers, the
latency and the URLs are printed. Every process started here is stopped here, by process
group, on Ctrl-C, on SIGTERM and on any failure; a service that exits stops the rest.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from modelplane.cli import port_in_use
from services.catalog import SERVICES
from shared.errors import RegistryError
from shared.registry import RegistryClient, is_not_found
from training.all import STEPS, commands

STATE = Path(".modelplane")
#: the classify export of the platform: the two fast variants (`modelplane bench export`
#: runs the whole stage, pruning and QAT included)
CLASSIFY_EXPORT = ("--variants", "fp32,int8-static", "--skip-study")
#: timed requests per service after the warm-up one
TIMED = 5


def say(message: str) -> None:
    click.secho(f"==> {message}", bold=True)


def mlflow_command(store: Path, host: str, port: int) -> list[str]:
    """The MLflow server over a SQLite store and local artifacts under `store`."""
    (store / "metrics").mkdir(parents=True, exist_ok=True)
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--expose-prometheus",
        str(store / "metrics"),
    ]


class Stack:
    """Processes in their own process groups; stop() ends them all, newest first."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append((name, proc, log))

    def proc(self, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        return next((proc, log) for n, proc, log in self.procs if n == name)

    def exited(self) -> str | None:
        return next((name for name, proc, _ in self.procs if proc.poll() is not None), None)

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"    stopped {name} (pid {proc.pid})", flush=True)


@dataclass(frozen=True)
class Sample:
    """One real request to a service and how to say what came back."""

    title: str
    path: str
    request: dict[str, Any]
    describe: Callable[[dict[str, Any]], str]


def digits() -> tuple[list[bytes], list[int]]:
    """Held-out digits (never trained on) as 8x8 PNGs, as a scanner would send them."""
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    test = load_splits()["test"]
    return [encode_png(gray_to_image(px)) for px in test.images], [int(x) for x in test.labels]


def samples() -> dict[str, list[Sample]]:
    """The requests `up` sends, per service: real held-out digits and texts."""
    from training.text_data import language_split

    pngs, labels = digits()
    b64 = [base64.b64encode(png).decode() for png in pngs]
    other = next(i for i, label in enumerate(labels) if label == labels[0] and i > 0)
    different = next(i for i, label in enumerate(labels) if label != labels[0])
    texts = language_split("test", 1)
    text, language = texts.texts[0], texts.label_names[texts.labels[0]]
    source = "def add(a, b):\n    return a + b"  # short: the quick model reads 64 tokens

    def top(predictions: list[dict[str, Any]]) -> str:
        return ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions)

    return {
        "classify": [
            Sample(
                f"a held-out {labels[0]}",
                "/v1/classify",
                {
                    "content": pngs[0],
                    "headers": {"content-type": "image/png"},
                    "params": {"top_k": 3},
                },
                lambda a: top(a["predictions"]),
            )
        ],
        "similarity": [
            Sample(
                f"two different {labels[0]}s",
                "/v1/similarity/compare",
                {"json": {"image_a": b64[0], "image_b": b64[other]}},
                lambda a: f"similarity {a['similarity']:.2f}, same digit: {a['same']}",
            ),
            Sample(
                f"a {labels[0]} and a {labels[different]}",
                "/v1/similarity/compare",
                {"json": {"image_a": b64[0], "image_b": b64[different]}},
                lambda a: f"similarity {a['similarity']:.2f}, same digit: {a['same']}",
            ),
        ],
        "explain": [
            Sample(
                f"why is this a {labels[0]}? (saliency)",
                "/v1/explain",
                {"json": {"image": b64[0], "method": "saliency"}},
                lambda a: (
                    f"predicted {a['prediction']['label']}; heatmap "
                    f"{len(base64.b64decode(a['heatmap']))} bytes of PNG"
                ),
            )
        ],
        "generate": [
            Sample(
                "a handwritten 7",
                "/v1/generate",
                {"json": {"prompt": "a handwritten 7", "seed": 0}},
                lambda a: (
                    f"{len(a['images'])} image(s), steps {a['params'].get('steps')}, "
                    f"seed {a['params'].get('seed')}"
                ),
            )
        ],
        "text": [
            Sample(
                f"which language? (held-out {language})",
                "/v1/text/classify",
                {"json": {"texts": [text], "top_k": 3}},
                lambda a: top(a["results"][0]["top_k"]),
            ),
            Sample(
                "summarize `def add(a, b): return a + b`",
                "/v1/text/generate",
                {"json": {"text": source}},
                lambda a: f"{a['text']!r} ({a['tokens']} tokens)",
            ),
        ],
    }


def ask(client: httpx.Client, sample: Sample) -> tuple[str, float | None]:
    """Send the sample once (warm-up: connection, caches) and then TIMED times on the same
    keep-alive connection; its answer and the median round trip in ms (None: not a 200)."""
    answer = client.post(sample.path, **sample.request)
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}: {answer.text[:200]}", None
    times = []
    for _ in range(TIMED):
        started = time.perf_counter()
        client.post(sample.path, **sample.request).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return sample.describe(answer.json()), statistics.median(times)


class Platform:
    def __init__(self, mlflow_port: int = 5000) -> None:
        self.mlflow_port = mlflow_port
        self.tracking = f"http://127.0.0.1:{mlflow_port}"
        self.stack = Stack()
        self.env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking,
            "MODEL_CACHE_DIR": str((STATE / "cache").resolve()),
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }

    def up(self, quick: bool, full: bool, retrain: bool, wait: bool) -> None:
        began = time.monotonic()
        busy = [
            f"{port} ({name})"
            for name, port in [("mlflow", self.mlflow_port), *((s.name, s.port) for s in SERVICES)]
            if port_in_use("127.0.0.1", port)
        ]
        if busy:
            raise click.ClickException(
                f"port(s) in use: {', '.join(busy)}; stop what runs there (or pass "
                "--mlflow-port for MLflow)"
            )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            self.start_mlflow()
            self.ensure_models(quick=quick, full=full, retrain=retrain)
            self.start_services()
            say(f"one real request to each service ({time.monotonic() - began:.0f} s since start)")
            failed = self.send_samples()
            self.print_urls()
            if failed and not wait:
                raise click.ClickException(f"{failed} request(s) were not answered with a 200")
            if wait:
                say("up; Ctrl-C stops everything")
                while (gone := self.stack.exited()) is None:
                    time.sleep(1)
                proc, log = self.stack.proc(gone)
                say(f"{gone} exited with status {proc.returncode} (see {log}); stopping the rest")
        except KeyboardInterrupt:
            print(flush=True)
        finally:
            say("stopping")
            self.stack.stop()

    def start_mlflow(self) -> None:
        store = (STATE / "mlflow").resolve()
        say(f"starting MLflow on {self.tracking} (store: {store})")
        cmd = mlflow_command(store, "127.0.0.1", self.mlflow_port)
        self.stack.start("mlflow", cmd, self.env, STATE / "logs" / "mlflow.log")
        self.wait_ready("mlflow", f"{self.tracking}/health", 120)

    def ensure_models(self, quick: bool, full: bool, retrain: bool) -> None:
        """Train and export each task whose @production the registry lacks (all with
        `retrain`): full classify, quick others, unless `quick` or `full` says otherwise."""
        registry = RegistryClient.from_environment(self.tracking)
        for task in STEPS["train"]:
            version = None if retrain else alias_version(registry, task)
            if version is not None:
                say(f"{task}: @production is version {version} in the registry; reused")
                continue
            tiny = quick or (not full and task != "classify")
            candidate = None if retrain else alias_version(registry, f"{task}-torch", "candidate")
            if candidate is None:
                how = "quick" if tiny else "full"
                (_, train), = commands("train", (task,), tiny)  # fmt: skip
                self.step(f"training {task} ({how}) -> {task}-torch@candidate", train)
            else:
                say(f"{task}-torch@candidate is version {candidate}; exporting it")
            (_, export), = commands("export", (task,), tiny)  # fmt: skip
            if task == "classify":
                export = [*export, *CLASSIFY_EXPORT]
            self.step(f"exporting {task} -> {task}@production", export)

    def step(self, title: str, cmd: list[str]) -> None:
        say(title)
        started = time.monotonic()
        code = subprocess.call(cmd, env=self.env)
        if code != 0:
            raise click.ClickException(f"step failed with status {code}: {shlex.join(cmd[1:])}")
        print(f"    done in {time.monotonic() - started:.0f} s", flush=True)

    def start_services(self) -> None:
        say("starting " + ", ".join(f"{s.name} (:{s.port})" for s in SERVICES))
        for svc in SERVICES:
            cmd = [sys.executable, "-m", "modelplane", "serve", svc.name, "--port", str(svc.port)]
            # five services share this machine's cores: one math thread each
            env = {**self.env, "ONNX_INTRA_OP_THREADS": "1", "LOG_LEVEL": "WARNING"}
            self.stack.start(svc.name, cmd, env, STATE / "logs" / f"{svc.name}.log")
        for svc in SERVICES:
            self.wait_ready(svc.name, f"{svc.local_url}/readyz", 300)
            print(f"    {svc.name} ready", flush=True)

    def wait_ready(self, name: str, url: str, timeout_s: float) -> None:
        proc, log = self.stack.proc(name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise click.ClickException(f"{name} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise click.ClickException(f"{url} was not ready after {timeout_s:.0f} s; see {log}")

    def send_samples(self) -> int:
        """Send every sample and print the answers; the number of requests that failed."""
        print("    (latency: median round trip of 5 requests on one warm keep-alive connection)")
        failed = 0
        for svc, sent in zip(SERVICES, (samples()[s.name] for s in SERVICES), strict=True):
            with httpx.Client(base_url=svc.local_url, timeout=120) as client:
                for sample in sent:
                    answer, ms = ask(client, sample)
                    failed += ms is None
                    timing = "failed" if ms is None else f"{ms:.1f} ms"
                    print(f"    {svc.name:<10} {sample.title}: {answer}   ({timing})")
        return failed

    def print_urls(self) -> None:
        say("the platform is up")
        print(f"    MLflow UI    {self.tracking}")
        for svc in SERVICES:
            print(f"    {svc.name:<12} {svc.local_url}/docs   (metrics {svc.local_url}/metrics)")
        print("    modelplane models   lists what each service serves", flush=True)


def alias_version(registry: RegistryClient, name: str, alias: str = "production") -> str | None:
    """The version `name@alias` names, or None when the registry has no such alias."""
    try:
        return registry.resolve_version(f"models:/{name}@{alias}")
    except RegistryError as exc:
        if is_not_found(exc):
            return None
        raise
