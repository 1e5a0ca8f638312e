"""`make demo`: MLflow, train, export, serve classify, send real digits, keep it up until Ctrl-C.

Every process started here is stopped here, by PID, on Ctrl-C and on any failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.catalog import entry

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".modelplane"


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


class Stack:
    """The processes of the demo; stop() ends them all (process groups, SIGTERM then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                print(f"    stopped {name} (pid {proc.pid})", flush=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    sys.exit(f"{url} was not ready after {timeout_s:.0f}s; see {log}")


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def run_step(title: str, cmd: list[str], env: dict[str, str]) -> None:
    say(title)
    started = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code != 0:
        raise SystemExit(f"step failed ({code}): {' '.join(cmd)}")
    print(f"    done in {time.monotonic() - started:.0f}s", flush=True)


def send_digits(url: str, count: int) -> None:
    """POST real held-out digits (8x8 PNGs, as a user's scanner would send) and print answers."""
    from shared.media import encode_png, gray_to_image
    from training.data import load_splits

    test = load_splits()["test"]
    for pixels, label in zip(test.images[:count], test.labels[:count], strict=True):
        started = time.perf_counter()
        response = httpx.post(
            f"{url}/v1/classify?top_k=3",
            content=encode_png(gray_to_image(pixels)),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        body = response.json()
        top = ", ".join(f"{p['label']}: {p['score']:.3f}" for p in body["predictions"])
        mark = "ok " if body["predictions"][0]["label"] == str(label) else "MISS"
        print(f"    [{mark}] true {label} -> {top}   ({elapsed:.1f} ms)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model in seconds (for a smoke run)"
    )
    parser.add_argument("--no-wait", action="store_true", help="stop after the requests")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--port", type=int, default=entry("classify").port)
    args = parser.parse_args(argv)
    began = time.monotonic()
    tracking = f"http://127.0.0.1:{args.mlflow_port}"
    service_url = f"http://127.0.0.1:{args.port}"
    for port in (args.mlflow_port, args.port):
        if not port_free(port):
            sys.exit(f"port {port} is in use; stop what runs there or pass --mlflow-port/--port")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "PYTHONUNBUFFERED": "1",
        "MODEL_CACHE_DIR": str(STATE / "cache"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    stack = Stack()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        say(f"starting MLflow on {tracking} (store: {STATE / 'mlflow'})")
        log = STATE / "logs" / "mlflow.log"
        mlflow = stack.start(
            "mlflow",
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{STATE / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination",
                str(STATE / "mlflow" / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(args.mlflow_port),
                "--workers",
                "1",
            ],
            env,
            log,
        )
        (STATE / "mlflow").mkdir(parents=True, exist_ok=True)
        wait_ready(f"{tracking}/health", mlflow, log, 120)
        train = [sys.executable, "-m", "training.classify", *(["--quick"] if args.quick else [])]
        run_step(
            "training classify (resnet18 on the digits) -> classify-torch@candidate", train, env
        )
        run_step(
            "exporting fp32 + int8-static ONNX, gates -> classify@production",
            # the demo builds the two fast variants; `make bench-export` runs the whole stage
            [
                sys.executable,
                "-m",
                "training.export",
                "classify",
                "--variants",
                "fp32,int8-static",
                "--skip-study",
                *(["--quick"] if args.quick else []),
            ],
            env,
        )
        say(f"starting the classify service on {service_url}")
        log = STATE / "logs" / "classify.log"
        service = stack.start(
            "classify",
            [sys.executable, "-m", "services.classify", "--port", str(args.port)],
            env,
            log,
        )
        wait_ready(f"{service_url}/readyz", service, log, 120)
        say(f"classifying real held-out digits ({time.monotonic() - began:.0f}s since start)")
        send_digits(service_url, 6)
        say("the stack is up")
        print(
            f"    MLflow UI        {tracking}\n"
            f"    service docs     {service_url}/docs\n"
            f"    model            {service_url}/v1/model\n"
            f"    metrics          {service_url}/metrics\n"
            f"    try: curl -s -H 'content-type: image/png' --data-binary @digit.png "
            f"{service_url}/v1/classify",
            flush=True,
        )
        if not args.no_wait:
            say("Ctrl-C stops everything")
            while all(proc.poll() is None for _, proc in stack.procs):
                time.sleep(1)
            say("a process exited; stopping the rest")
    except KeyboardInterrupt:
        print(flush=True)
    finally:
        say("stopping")
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
