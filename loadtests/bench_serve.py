"""`make bench-serve`: the classify service over HTTP against raw onnxruntime and two peers.

In one run: (0) the server CPU per request on a tiny, overhead-bound model the bench builds
(loadtests/overhead.py), old layout pinned beside the default and any `--layouts`; then per
variant (1) raw onnxruntime in-process at batch 1 and batch 32 with the service's thread
settings (the ceiling; measured before, between and after every server, median taken); (2)
the running service over loopback HTTP at concurrency 1, 8 and 32, driven by wrk (C, one
thread, a Lua script POSTing a real digit PNG): the old layout pinned, the default, each
`--layouts PxT[xB]`, and the peers serving the same ONNX file (loadtests/peers.py: LitServe
with its own batching, `mlflow models serve`), each row with the server's CPU per request;
(3) resident memory after warm-up and after load, and cold start to ready; (4) unless
`--no-protocols`, the Open Inference Protocol on the fp32 variant at concurrency 1 and 32:
REST (`/v2/models/classify/infer`, binary tensor, driven by wrk) beside gRPC (`ModelInfer`,
raw contents, driven by `grpc_load`: an asyncio grpc.aio client, N calls in flight on one
HTTP/2 connection, in this process). Prints one table and modelplane's ratio to each peer.
Needs `wrk` (Debian package) and the bundle in the registry or the local cache (`make demo`,
or the quick train + export in docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from loadtests.overhead import model_cpu_per_item_s, tree_cpu_s, tree_pids, write_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
"""


@dataclass
class Row:
    label: str
    concurrency: int | str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    cpu_us: float | None = None  # server CPU per request (every process of the server)
    outside_us: float | None = None  # cpu_us less the model's own CPU per item
    variant: str = ""


def raw_ort(bundle_path: Path, variant: str, threads: int, seconds: float) -> list[Row]:
    """In-process onnxruntime: batch-1 latency and batch-32 throughput (images/s)."""
    from shared.bundle import open_bundle
    from shared.onnx import OnnxModel

    bundle = open_bundle(bundle_path)
    model = OnnxModel.from_bundle(bundle, variant, threads)
    sample = bundle.load_array(bundle.manifest["sample_inputs"])
    rows = []
    for batch in (1, 32):
        x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])))
        for _ in range(5):
            model.run({"input": x})
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            model.run({"input": x})
            times.append(time.perf_counter() - started)
        rows.append(
            Row(
                f"raw ORT {variant} batch {batch}",
                "-",
                batch / float(np.mean(times)),
                float(np.percentile(times, 50)) * 1000,
                float(np.percentile(times, 99)) * 1000,
                variant=variant,
            )
        )
    return rows


def raw_into(
    runs: list[list[Row]], bundle_path: Path, variant: str, threads: int, seconds: float
) -> None:
    """One more raw onnxruntime run (`raw_ort`) appended to `runs`."""
    runs.append(raw_ort(bundle_path, variant, threads, seconds))


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """One row per batch size from repeated raw runs (before, between and after the service
    runs, since this machine's speed drifts over minutes): the run of median throughput,
    its label listing every run's figure."""
    merged = []
    for same in zip(*runs, strict=True):
        ordered = sorted(same, key=lambda r: r.rps)
        middle = ordered[len(ordered) // 2]
        spread = " ".join(f"{r.rps:.0f}" for r in same)
        print(f"  {middle.label}: {spread} /s over {len(same)} runs; median taken", flush=True)
        merged.append(middle)
    return merged


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def parse_wrk(output: str) -> WrkResult:
    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    total = int(errors.group(1)) if errors else 0
    if socket_errors:
        total += sum(int(g) for g in socket_errors.groups())
    return WrkResult(rps, p50, p99, total, requests)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    procs: list[subprocess.Popen[bytes]]
    cold_start_s: float

    @property
    def roots(self) -> set[int]:
        """The servers' processes (their children are counted with them: tree_pids)."""
        return {p.pid for p in self.procs}


SERVICE = [sys.executable, "-m", "services.classify"]


@contextmanager
def served(
    env: dict[str, str],
    log_dir: Path,
    label: str,
    command: list[str] | None = None,
    ready_path: str = "/readyz",
) -> Iterator[Served]:
    """`python -m services.classify` on a free port, ready once every one of its processes
    has answered GET /v1/model (each joins the port when its models are ready); stopped by
    PID on exit. `command` (a peer) is run instead, with `{port}` in it replaced, ready once
    `ready_path` answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = (
        [a.replace("{port}", str(port)) for a in command]
        if command
        else [*SERVICE, "--port", str(port)]
    )
    procs = []
    started = time.perf_counter()
    try:
        log = log_dir / f"{label.replace(' ', '_')}.log"
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        while not every_process_ready(url, ready_path if command else None):
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"{label}: the server exited; see {log}")
            time.sleep(0.02)
        yield Served(url, procs, time.perf_counter() - started)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(timeout=5)


def every_process_ready(url: str, peer_ready_path: str | None) -> bool:
    """A peer: `peer_ready_path` answers 200. modelplane: GET /v1/model (a new connection
    each time, so the kernel may pick any process) has come from all of the layout's
    processes."""
    try:
        if peer_ready_path is not None:
            path, close = peer_ready_path, {"connection": "close"}
            return httpx.get(f"{url}{path}", timeout=1, headers=close).status_code == 200
        answered: set[int] = set()
        for _ in range(200):
            answer = httpx.get(f"{url}/v1/model", timeout=1, headers={"connection": "close"})
            if answer.status_code != 200:
                return False
            layout = answer.json()["layout"]
            processes = layout["processes"]
            answered.add(layout["process_index"])
            if len(answered) == processes:
                return True
        return False
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Target:
    """What wrk sends: path, content type and body file."""

    path: str
    content_type: str
    body: Path


def wrk(
    url: str, target: Target, concurrency: int, seconds: float, log_dir: Path, lua: str = ""
) -> WrkResult:
    """wrk (1 thread) POSTing the target's body to its path; `lua` is appended to the request
    script (a `delay()` function paces it)."""
    script = log_dir / "post.lua"
    script.write_text(LUA + lua)
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            f"{url}{target.path}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(target.body), "BENCH_TYPE": target.content_type},
        check=True,
    )
    return parse_wrk(result.stdout)


def measured_wrk(
    service: Served, target: Target, concurrency: int, seconds: float, log_dir: Path
) -> tuple[WrkResult, float]:
    """wrk's result and the server's CPU microseconds per completed request over the run."""
    before = tree_cpu_s(service.roots)
    got = wrk(service.url, target, concurrency, seconds, log_dir)
    used = tree_cpu_s(service.roots) - before
    return got, used / max(1, got.requests) * 1e6


LUA_V2 = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("BENCH_HEADER_LENGTH")
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
"""


def v2_body(directory: Path, x: np.ndarray) -> tuple[Path, int]:
    """The REST V2 binary-extension request for tensor `x`: JSON header + raw bytes."""
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ]
    }
    encoded = json.dumps(header).encode()
    body = directory / "infer.bin"
    body.write_bytes(encoded + x.tobytes())
    return body, len(encoded)


def wrk_v2(url: str, x: np.ndarray, concurrency: int, seconds: float, log_dir: Path) -> WrkResult:
    """wrk (1 thread) POSTing the V2 binary request for `x` to /v2/models/classify/infer."""
    body, header_length = v2_body(log_dir, x)
    script = log_dir / "v2.lua"
    script.write_text(LUA_V2)
    url = f"{url}/v2/models/classify/infer"
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--latency", "-s", str(script)]
    result = subprocess.run(
        [*cmd, url],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body), "BENCH_HEADER_LENGTH": str(header_length)},
        check=True,
    )
    return parse_wrk(result.stdout)


async def grpc_load(target: str, x: np.ndarray, concurrency: int, seconds: float) -> WrkResult:
    """`concurrency` ModelInfer calls in flight (closed loop) on one channel for `seconds`."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="classify")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for _ in range(50):  # warm-up, as for HTTP
            await infer(request)
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    await infer(request, timeout=10)
                except grpc.RpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    return WrkResult(len(latencies) / elapsed, p50, p99, errors, len(latencies))


def bench_protocols(env: dict[str, str], x: np.ndarray, seconds: float, log_dir: Path) -> list[Row]:
    """One service with gRPC on: REST V2 (wrk) and gRPC (grpc_load) at concurrency 1 and 32."""
    port = free_port()
    rows = []
    with served({**env, "GRPC_PORT": str(port)}, log_dir, "protocols") as service:
        for concurrency in (1, 32):
            rest = wrk_v2(service.url, x, concurrency, seconds, log_dir)
            got = asyncio.run(grpc_load(f"127.0.0.1:{port}", x, concurrency, seconds))
            for label, result in (("REST v2 infer fp32", rest), ("gRPC ModelInfer fp32", got)):
                rows.append(
                    Row(label, concurrency, result.rps, result.p50_ms, result.p99_ms, result.errors)
                )
    return rows


def digit_png(directory: Path) -> Path:
    """A real test-split digit as a PNG file: the body every benchmark request sends."""
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    body = directory / "digit.png"
    body.write_bytes(encode_png(gray_to_image(load_splits()["test"].images[0])))
    return body


def warm_up(url: str, target: Target, requests: int = 50) -> None:
    body = target.body.read_bytes()
    with httpx.Client(headers={"content-type": target.content_type}) as client:
        for _ in range(requests):
            client.post(f"{url}{target.path}", content=body).raise_for_status()


@dataclass(frozen=True)
class Server:
    """One server configuration measured: its label, environment, and for a peer its command
    line, readiness path and request."""

    label: str
    env: dict[str, str]
    command: list[str] | None = None
    ready_path: str = "/readyz"
    target: Target | None = None


def bench_service(
    server: Server,
    variant: str,
    target: Target,
    levels: list[int],
    seconds: float,
    log_dir: Path,
    model_cpu_us: dict[int, float],
) -> tuple[list[Row], dict[str, float]]:
    """Start the server, measure cold start and RSS, drive it with wrk at each concurrency;
    `model_cpu_us` (batch -> the model's CPU per item) gives each row's CPU outside the model."""
    target = server.target or target
    with served(server.env, log_dir, server.label, server.command, server.ready_path) as service:
        facts = {"cold_start_s": service.cold_start_s}
        warm_up(service.url, target)
        facts["rss_warm_mb"] = sum(rss_mb(pid) for pid in tree_pids(service.roots))
        rows = []
        for concurrency in levels:
            got, cpu_us = measured_wrk(service, target, concurrency, seconds, log_dir)
            model_us = model_cpu_us[1 if concurrency == 1 else 32]
            rows.append(
                Row(
                    server.label,
                    concurrency,
                    got.rps,
                    got.p50_ms,
                    got.p99_ms,
                    got.errors,
                    cpu_us,
                    cpu_us - model_us,
                    variant,
                )
            )
        facts["rss_loaded_mb"] = sum(rss_mb(pid) for pid in tree_pids(service.roots))
        return rows, facts


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-uri, --tracking-uri and --cache-dir: which bundle a benchmark serves."""
    parser.add_argument("--model-uri", default="models:/classify@production")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(".modelplane/cache"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make bench-serve", description=__doc__.split("\n")[0])
    model_arguments(parser)
    parser.add_argument(
        "--variants", default="", help="comma list; default: fp32 + the bundle default"
    )
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measure every server this many times, interleaved; the median run is shown",
    )
    parser.add_argument(
        "--layouts",
        default="",
        help="more layouts to measure beside the old and the new default, comma list of "
        "PxT[xB]: P processes on one port x T intra-op threads (x B batches in flight)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="one more server beside the defaults, with these settings (repeatable): what a "
        "setting costs, e.g. --env DRIFT_ENABLED=false",
    )
    parser.add_argument(
        "--scale-out", action="store_true", help="also 1 process x every core, 2 x half each"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip LitServe and mlflow")
    parser.add_argument("--no-protocols", action="store_true", help="skip REST v2 and gRPC")
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="only the server CPU per request on the tiny model (no bundle needed)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench-serve does it)")
    from shared.settings import available_cores

    levels = [int(c) for c in args.concurrency.split(",")]
    threads = available_cores()
    layouts = [layout for layout in args.layouts.split(",") if layout]
    if args.scale_out:
        layouts += [f"1x{threads}", f"2x{max(1, threads // 2)}"]
    rows: list[Row] = []
    facts: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        body = digit_png(work)
        rows += bench_overhead(work, body, threads, layouts, args.seconds, args.repeats, facts)
        if not args.overhead_only:
            rows += bench_bundle(args, work, body, threads, levels, layouts, facts)
    print_table(rows, facts)
    print_ratios(rows)
    return 0


def bench_overhead(
    work: Path,
    body: Path,
    threads: int,
    layouts: list[str],
    seconds: float,
    repeats: int,
    facts: dict[str, dict[str, float]],
) -> list[Row]:
    """Server CPU per request on the tiny model (served from a seeded cache, registry down),
    old default beside new default, at concurrency 1 and 32."""
    cache = work / "tiny-cache"
    bundle_dir = write_tiny_bundle(cache)
    model_us = {b: model_cpu_per_item_s(bundle_dir, "fp32", threads, b) * 1e6 for b in (1, 32)}
    print(
        f"tiny model: {model_us[1]:.1f} us (batch 1) / {model_us[32]:.2f} us (batch 32) of CPU "
        "per item, raw",
        flush=True,
    )
    base = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens: the cache serves
        "MODEL_URI": "models:/classify@production",
        "MODEL_CACHE_DIR": str(cache),
        "LOG_LEVEL": "WARNING",
    }
    target = Target("/v1/classify", "image/png", body)
    servers = service_configurations("tiny", base, threads, layouts)
    return interleaved(servers, "tiny", target, [1, 32], seconds, work, model_us, repeats, facts)


def interleaved(
    servers: list[Server],
    variant: str,
    target: Target,
    levels: list[int],
    seconds: float,
    work: Path,
    model_us: dict[int, float],
    repeats: int,
    facts: dict[str, dict[str, float]],
    between: Callable[[], None] = lambda: None,
) -> list[Row]:
    """Every server measured `repeats` times, round-robin (this machine's speed drifts over
    minutes: one server measured in a slow minute and the next in a fast one differ by the
    machine, not by themselves), `between()` after each; per server and concurrency the run
    of median req/s, and the median of each fact."""
    runs: dict[str, list[list[Row]]] = {server.label: [] for server in servers}
    seen: dict[str, list[dict[str, float]]] = {server.label: [] for server in servers}
    for repeat in range(repeats):
        for server in servers:
            print(f"  measuring {server.label} ({repeat + 1}/{repeats}) ...", flush=True)
            measured, found = bench_service(
                server, variant, target, levels, seconds, work, model_us
            )
            runs[server.label].append(measured)
            seen[server.label].append(found)
            between()
    rows = []
    for server in servers:
        rows += median_rows(runs[server.label]) if repeats > 1 else runs[server.label][0]
        facts[server.label] = {
            key: float(np.median([found[key] for found in seen[server.label]]))
            for key in seen[server.label][0]
        }
    return rows


def bench_bundle(
    args: argparse.Namespace,
    work: Path,
    body: Path,
    threads: int,
    levels: list[int],
    layouts: list[str],
    facts: dict[str, dict[str, float]],
) -> list[Row]:
    """Each variant: raw ORT (before, between, after), the old and the new default layout,
    any more layouts, the peers, and (fp32) REST v2 beside gRPC."""
    from shared.registry import RegistryClient

    registry = RegistryClient.from_environment(args.tracking_uri)
    fetched = registry.fetch(args.model_uri, args.cache_dir)
    bundle = fetched.bundle
    variants = [v for v in args.variants.split(",") if v] or sorted(
        {"fp32", bundle.default_variant}
    )
    print(
        f"{args.model_uri} -> version {fetched.version}; variants {variants}; {threads} cores; "
        f"wrk 1 thread, {args.seconds:.0f}s per level",
        flush=True,
    )
    target = Target("/v1/classify", "image/png", body)
    rows: list[Row] = []
    raw_seconds = min(args.seconds, 5) / 2
    for variant in variants:
        model_us = {
            b: model_cpu_per_item_s(bundle.path, variant, threads, b) * 1e6 for b in (1, 32)
        }
        raw_runs = [raw_ort(bundle.path, variant, threads, raw_seconds)]
        base = {
            "MLFLOW_TRACKING_URI": args.tracking_uri,
            "MODEL_URI": args.model_uri,
            "MODEL_VARIANT": variant,
            "MODEL_CACHE_DIR": str(args.cache_dir),
            "LOG_LEVEL": "WARNING",
        }
        servers = service_configurations(variant, base, threads, layouts, args.env)
        if not args.no_peers:
            servers += peer_configurations(bundle.path, variant, threads, work)

        raw_again = functools.partial(
            raw_into, raw_runs, bundle.path, variant, threads, raw_seconds
        )
        served_rows = interleaved(
            servers, variant, target, levels, args.seconds, work, model_us, args.repeats,
            facts, raw_again,
        )  # fmt: skip
        rows += median_rows(raw_runs) + served_rows
        if variant == "fp32" and not args.no_protocols:
            print("  measuring REST v2 and gRPC ...", flush=True)
            sample = bundle.load_array(bundle.manifest["sample_inputs"])
            one = np.ascontiguousarray(sample[:1], dtype=np.float32)
            rows += bench_protocols(base, one, args.seconds, work)
    return rows


def service_configurations(
    variant: str, base: dict[str, str], cores: int, layouts: list[str], envs: Sequence[str] = ()
) -> list[Server]:
    """The old default (one process, every core as intra-op threads, one batch in flight,
    pinned by its settings), the new default (no layout setting at all: shared/layout.py),
    the default with each of `envs` (KEY=VALUE,...), and `layouts` (PxT[xB]: SERVER_PROCESSES x
    ONNX_INTRA_OP_THREADS x INFERENCE_WORKERS)."""
    old = {
        "SERVER_PROCESSES": "1",
        "ONNX_INTRA_OP_THREADS": str(cores),
        "INFERENCE_WORKERS": "1",
    }
    servers = [
        Server(f"service {variant} old default", {**base, **old}),
        Server(f"service {variant} new default", base),
    ]
    for settings in envs:
        pairs = dict(pair.split("=", 1) for pair in settings.split(","))
        servers.append(Server(f"service {variant} {settings}", {**base, **pairs}))
    for layout in layouts:
        processes, threads, *batches = (int(n) for n in layout.split("x"))
        env = {
            **base,
            "SERVER_PROCESSES": str(processes),
            "ONNX_INTRA_OP_THREADS": str(threads),
            "INFERENCE_WORKERS": str(batches[0] if batches else 1),
        }
        servers.append(Server(f"service {variant} {layout}", env))
    return servers


def peer_configurations(bundle_dir: Path, variant: str, threads: int, work: Path) -> list[Server]:
    """LitServe and `mlflow models serve` over the same ONNX file (loadtests/peers.py)."""
    image = base64.b64encode(work.joinpath("digit.png").read_bytes()).decode()
    litserve_body = work / "litserve.json"
    litserve_body.write_text(json.dumps({"image": image}))
    mlflow_body = work / "mlflow.json"
    mlflow_body.write_text(json.dumps({"inputs": [image]}))
    model_dir = work / f"mlflow-{variant}"
    if not model_dir.exists():
        peer = [sys.executable, "-m", "loadtests.peers"]
        subprocess.run(
            [*peer, "mlflow-save", str(bundle_dir), variant, str(threads), str(model_dir)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    venv_bin = str(Path(sys.executable).parent)
    peer_env = {
        "PYTHONPATH": str(ROOT),
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    litserve = [sys.executable, "-m", "loadtests.peers", "litserve", str(bundle_dir), variant]
    mlflow = [str(Path(venv_bin) / "mlflow"), "models", "serve", "-m", str(model_dir)]
    return [
        Server(
            f"LitServe {variant}",
            peer_env,
            command=[*litserve, "{port}", str(threads)],
            ready_path="/health",
            target=Target("/predict", "application/json", litserve_body),
        ),
        Server(
            f"mlflow serve {variant}",
            peer_env,
            command=[
                *mlflow,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                "{port}",
                "-w",
                "1",
            ],
            ready_path="/ping",
            target=Target("/invocations", "application/json", mlflow_body),
        ),
    ]


def print_table(rows: list[Row], facts: dict[str, dict[str, float]]) -> None:
    ceiling = {
        r.variant: r.rps for r in rows if r.label.startswith("raw ORT") and r.label.endswith("32")
    }
    print(
        f"\n| {'what':<34} | conc | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | errors "
        "| vs raw b32 | CPU us/req | outside model us |"
    )
    print(
        f"|{'-' * 36}|------|{'-' * 10}|{'-' * 9}|{'-' * 9}|--------|------------|------------|"
        "------------------|"
    )
    for r in rows:
        is_raw = r.label.startswith("raw ORT")
        ratio = f"{r.rps / ceiling[r.variant]:.0%}" if r.variant in ceiling and not is_raw else ""
        cpu = f"{r.cpu_us:.0f}" if r.cpu_us is not None else ""
        outside = f"{r.outside_us:.0f}" if r.outside_us is not None else ""
        print(
            f"| {r.label:<34} | {r.concurrency!s:>4} | {r.rps:>8.1f} | {r.p50_ms:>7.2f} | "
            f"{r.p99_ms:>7.2f} | {r.errors:>6} | {ratio:>10} | {cpu:>10} | {outside:>16} |"
        )
    print()
    for label, values in facts.items():
        print(
            f"{label}: cold start {values['cold_start_s']:.2f}s (cached bundle -> ready), "
            f"RSS {values['rss_warm_mb']:.0f} MB warm, {values['rss_loaded_mb']:.0f} MB after load"
        )


def print_ratios(rows: list[Row]) -> None:
    """modelplane's new default against each peer (and the old default): req/s and p50."""
    by_key = {(r.label, r.concurrency): r for r in rows}
    for r in rows:
        if not r.label.endswith("new default"):
            continue
        others = [
            f"service {r.variant} old default",
            f"LitServe {r.variant}",
            f"mlflow serve {r.variant}",
        ]
        parts = []
        for other in others:
            peer = by_key.get((other, r.concurrency))
            if peer is not None and peer.rps > 0:
                name = other.replace(f" {r.variant}", "")
                ratio = r.rps / peer.rps
                parts.append(f"{ratio:.2f}x {name} (p50 {r.p50_ms:.2f} vs {peer.p50_ms:.2f} ms)")
        if parts:
            print(f"{r.variant} c={r.concurrency}: new default is " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
