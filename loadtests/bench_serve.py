"""`make bench-serve`: the classify service over HTTP against raw onnxruntime, on this machine.

In one run: (1) raw onnxruntime in-process at batch 1 and batch 32 with the service's thread
settings (the ceiling; measured before, between and after the service runs, median taken); (2)
the running service over loopback HTTP at concurrency 1, 8 and 32, driven by wrk (C, one thread,
a Lua script POSTing a real digit PNG), for each variant asked for, with dynamic batching on and
off; (3) resident memory after warm-up and after load, and cold start from a cached bundle to
ready; (4) the Open Inference Protocol on the fp32 variant at concurrency 1 and 32: REST
(`/v2/models/classify/infer`, binary tensor, driven by wrk) beside gRPC (`ModelInfer`, raw
contents, driven by `grpc_load`: an asyncio grpc.aio client, N calls in flight on one HTTP/2
connection, in this process), both sending the same one-image tensor. Prints one table. Needs
`wrk` (Debian package; Debian has no gRPC load generator such as ghz) and the bundle in the
registry or the local cache (`make demo` or `make mlflow` + train + export).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
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
            )
        )
    return rows


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


@contextmanager
def served(env: dict[str, str], log_dir: Path, label: str, processes: int = 1) -> Iterator[Served]:
    """`python -m services.classify` on a free port (`processes` > 1: that many sharing it
    with REUSE_PORT), ready on every process; stopped by PID on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if processes > 1:
        env = {**env, "REUSE_PORT": "true"}
    procs = []
    started = time.perf_counter()
    try:
        for index in range(processes):
            log = log_dir / f"{label.replace(' ', '_')}-{index}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.classify", "--port", str(port)],
                        cwd=ROOT,
                        env={**os.environ, **env},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        ready = 0
        # one process: its first ready answer; several: 20 consecutive per process (the kernel
        # spreads connections, so all of them have then answered ready)
        while ready < (1 if processes == 1 else 20 * processes):
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"{label}: a service process exited; see {log_dir}")
            try:
                ok = httpx.get(f"{url}/readyz", timeout=1, headers={"connection": "close"})
                ready = ready + 1 if ok.status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            time.sleep(0.02)
        yield Served(url, procs, time.perf_counter() - started)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            p.wait(timeout=15)


def wrk(
    url: str, body: Path, concurrency: int, seconds: float, log_dir: Path, lua: str = ""
) -> WrkResult:
    """wrk (1 thread) POSTing `body` as image/png to /v1/classify; `lua` is appended to the
    request script (a `delay()` function paces it)."""
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
            f"{url}/v1/classify",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body)},
        check=True,
    )
    return parse_wrk(result.stdout)


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


def warm_up(url: str, body: Path, requests: int = 50) -> None:
    for _ in range(requests):
        httpx.post(
            f"{url}/v1/classify", content=body.read_bytes(), headers={"content-type": "image/png"}
        )


def bench_service(
    label: str,
    env: dict[str, str],
    body: Path,
    levels: list[int],
    seconds: float,
    log_dir: Path,
    processes: int = 1,
) -> tuple[list[Row], dict[str, float]]:
    """Start the service, measure cold start and RSS, drive it with wrk at each concurrency."""
    with served(env, log_dir, label, processes) as service:
        facts = {"cold_start_s": service.cold_start_s}
        warm_up(service.url, body)
        pid = service.procs[0].pid
        facts["rss_warm_mb"] = rss_mb(pid)
        rows = []
        for concurrency in levels:
            got = wrk(service.url, body, concurrency, seconds, log_dir)
            rows.append(Row(label, concurrency, got.rps, got.p50_ms, got.p99_ms, got.errors))
        facts["rss_loaded_mb"] = rss_mb(pid)
        return rows, facts


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-uri, --tracking-uri and --cache-dir: which bundle a benchmark serves."""
    parser.add_argument("--model-uri", default="models:/classify@production")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(".modelplane/cache"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-serve", description=__doc__.split("\n")[0])
    model_arguments(parser)
    parser.add_argument(
        "--variants", default="", help="comma list; default: fp32 + the bundle default"
    )
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="instead: 1 process with every core vs 2 processes with half each, on one port",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench-serve does it)")
    from shared.registry import RegistryClient
    from shared.settings import available_cores

    registry = RegistryClient.from_environment(args.tracking_uri)
    fetched = registry.fetch(args.model_uri, args.cache_dir)
    bundle = fetched.bundle
    variants = [v for v in args.variants.split(",") if v] or sorted(
        {"fp32", bundle.default_variant}
    )
    levels = [int(c) for c in args.concurrency.split(",")]
    threads = available_cores()
    print(
        f"{args.model_uri} -> version {fetched.version}; variants {variants}; {threads} cores; "
        f"wrk 1 thread, {args.seconds:.0f}s per level",
        flush=True,
    )
    rows: list[Row] = []
    facts: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        body = digit_png(Path(tmp))
        raw_seconds = min(args.seconds, 5) / 2  # three runs per variant: before, between, after
        for variant in variants:
            raw_runs = [raw_ort(bundle.path, variant, threads, raw_seconds)]
            served_rows = []
            base = {
                "MLFLOW_TRACKING_URI": args.tracking_uri,
                "MODEL_URI": args.model_uri,
                "MODEL_VARIANT": variant,
                "MODEL_CACHE_DIR": str(args.cache_dir),
                "LOG_LEVEL": "WARNING",
            }
            for suffix, extra, processes in configurations(args.scale_out, threads):
                label = f"service {variant} {suffix}"
                print(f"  measuring {label} ...", flush=True)
                env = {**base, **extra}
                measured, facts[label] = bench_service(
                    label, env, body, levels, args.seconds, Path(tmp), processes
                )
                served_rows += measured
                raw_runs.append(raw_ort(bundle.path, variant, threads, raw_seconds))
            rows += median_rows(raw_runs) + served_rows
            if variant == "fp32" and not args.scale_out:
                print("  measuring REST v2 and gRPC ...", flush=True)
                sample = bundle.load_array(bundle.manifest["sample_inputs"])
                one = np.ascontiguousarray(sample[:1], dtype=np.float32)
                batched = {**base, "MAX_BATCH_SIZE": "32"}
                rows += bench_protocols(batched, one, args.seconds, Path(tmp))
    print_table(rows, facts)
    return 0


def configurations(scale_out: bool, cores: int) -> list[tuple[str, dict[str, str], int]]:
    """(label suffix, environment, processes) of each service configuration measured."""
    if scale_out:
        half = str(max(1, cores // 2))
        return [
            (f"1 proc x {cores} thr", {"ONNX_INTRA_OP_THREADS": str(cores)}, 1),
            (f"2 procs x {half} thr", {"ONNX_INTRA_OP_THREADS": half}, 2),
        ]
    return [
        ("batching on", {"MAX_BATCH_SIZE": "32"}, 1),
        ("batching off", {"MAX_BATCH_SIZE": "1"}, 1),
    ]


def print_table(rows: list[Row], facts: dict[str, dict[str, float]]) -> None:
    ceiling = {
        r.label.split(" batch")[0].replace("raw ORT ", ""): r.rps
        for r in rows
        if r.label.startswith("raw ORT") and r.label.endswith("batch 32")
    }
    print(
        f"\n| {'what':<34} | conc | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | errors "
        f"| vs raw b32 |"
    )
    print(f"|{'-' * 36}|------|{'-' * 10}|{'-' * 9}|{'-' * 9}|--------|------------|")
    for r in rows:
        variant = r.label.split()[1] if r.label.startswith("service") else ""
        ratio = f"{r.rps / ceiling[variant]:.0%}" if variant in ceiling else ""
        print(
            f"| {r.label:<34} | {r.concurrency!s:>4} | {r.rps:>8.1f} | {r.p50_ms:>7.2f} | "
            f"{r.p99_ms:>7.2f} | {r.errors:>6} | {ratio:>10} |"
        )
    print()
    for label, values in facts.items():
        print(
            f"{label}: cold start {values['cold_start_s']:.2f}s (cached bundle -> ready), "
            f"RSS {values['rss_warm_mb']:.0f} MB warm, {values['rss_loaded_mb']:.0f} MB after load"
        )


if __name__ == "__main__":
    sys.exit(main())
