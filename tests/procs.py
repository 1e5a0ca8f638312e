"""Real processes for integration tests: free ports, readiness polling, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: services the tests start run one process unless a test asks for more ("0": the layout's
#: default, tests/integration/test_server_processes.py): half the start-up CPU on 2 cores
ONE_PROCESS = {"SERVER_PROCESSES": "1"}
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(
    condition: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Call `condition` until it returns something truthy and return that; fail after
    `timeout_s` saying `what` was awaited. The one polling loop of the tests."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s}s")
        time.sleep(interval_s)


def readyz_saying(url: str, text: str) -> httpx.Response | None:
    """`url`/readyz's answer when it mentions `text` (a load error being reported), else None."""
    answer = httpx.get(f"{url}/readyz", timeout=5)
    return answer if text in answer.text else None


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    """Poll `url` until it answers 200; fail early (with the log) if the process dies."""

    def answered() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{tail(log)}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    poll_until(answered, timeout_s, f"{url} ready\n{tail(log)}")


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM the process group by PID, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)


@contextmanager
def running(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd` in its own process group with output to `log`; always stop it on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **ONE_PROCESS, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop(proc)


def run_module(
    module: str, *args: str, env: dict[str, str], log: Path, timeout_s: float = 600
) -> str:
    """Run `python -m module args` to completion; return its output, fail with it on error."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env={**os.environ, **ONE_PROCESS, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        finally:
            stop(proc)
    output = log.read_text(errors="replace")
    if code != 0:
        raise AssertionError(
            f"python -m {module} {' '.join(args)} exited {code}:\n{output[-4000:]}"
        )
    return output
