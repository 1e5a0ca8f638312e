"""`python -m loadtests.shutdown`: requests lost when a service process gets SIGTERM under load.

Closed-loop clients of two kinds drive the classify service: HTTP/1.1 keep-alive (one
connection per client, reused) and connection-per-request. SIGTERM goes to one process while
they run; every request started between the signal and the process's exit is in the
*shutdown window* and ends one of three ways:

- answered (200, or any HTTP status: the service answered);
- refused: the connection was never made (refused, or connect timed out), so the request was
  never sent: a clean refusal a client can retry elsewhere;
- lost: the request was sent and the connection closed or reset without an answer.

With `--processes 1` each round starts a fresh process and stops it (after its exit every
request is refused). With `--processes N` (N > 1) N processes share the port (REUSE_PORT);
each round signals the oldest and starts a replacement, a rolling restart: nothing should even
be refused. Prints failures per 1,000 requests in the window per client kind, and the shutdown
time (signal to exit). Exit 1 when any request was lost or answered with an error.

    python -m loadtests.shutdown --cache-dir .modelplane/cache --rounds 20 --processes 1
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("keep-alive", "per-request")
DEAD_REGISTRY = "http://127.0.0.1:9"  # nothing listens: the service serves its verified cache
#: a refused SYN is retried by the kernel after 1 s and 3 s: a connect that takes longer than
#: this is counted as refused (the request was never sent)
CONNECT_TIMEOUT_S = 5.0


@dataclass
class Tally:
    """Outcomes of the requests started inside shutdown windows, per client kind."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.outcomes.setdefault(kind, Counter())[outcome] += 1
            if detail and outcome != "ok":
                self.errors.setdefault(f"{kind} {outcome}", detail[:200])

    def count(self, kind: str, outcome: str) -> int:
        return self.outcomes.get(kind, Counter())[outcome]

    def total(self, kind: str) -> int:
        return sum(self.outcomes.get(kind, Counter()).values())

    def failed(self) -> int:
        return sum(self.count(kind, o) for kind in KINDS for o in ("lost", "error"))


class Window:
    """Whether "now" lies inside a shutdown window (signal sent, process not yet gone)."""

    def __init__(self) -> None:
        self._open = 0
        self._lock = threading.Lock()

    @contextmanager
    def opened(self) -> Iterator[None]:
        with self._lock:
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1

    def is_open(self) -> bool:
        return self._open > 0


def classify(send: Callable[..., httpx.Response], url: str, body: bytes) -> tuple[str, str]:
    """One request's outcome: ok, error (an HTTP error status), refused or lost."""
    try:
        answer = send(url, content=body, headers={"content-type": "image/png"})
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        return "refused", f"{type(exc).__name__}: {exc}"
    except httpx.HTTPError as exc:  # sent, then reset / closed / timed out: lost
        return "lost", f"{type(exc).__name__}: {exc}"
    if answer.status_code != 200:
        return "error", f"{answer.status_code}: {answer.text[:150]}"
    return "ok", ""


def digit_body() -> bytes:
    """A PNG the classify service accepts: a bright bar on black, 28x28 grey."""
    import numpy as np

    from shared.media import encode_png, gray_to_image

    image = np.zeros((28, 28), np.uint8)
    image[4:24, 12:16] = 255
    return encode_png(gray_to_image(image))


def client_loop(
    kind: str, target: Target, body: bytes, window: Window, tally: Tally, stop: threading.Event
) -> None:
    """Closed loop until `stop`: each request right after the previous one's outcome. A
    request counts when it started or ended inside a shutdown window (in flight at the signal,
    or sent during the shutdown)."""
    timeout = httpx.Timeout(10.0, connect=CONNECT_TIMEOUT_S)
    # per-request: no connection is kept, each request opens its own (and it is closed after)
    keep = None if kind == "keep-alive" else 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=keep)
    with httpx.Client(timeout=timeout, limits=limits) as client:
        while not stop.is_set():
            started_inside = window.is_open()
            outcome, detail = classify(client.post, target.url, body)
            if started_inside or window.is_open():
                tally.add(kind, outcome, detail)
            if outcome == "refused":
                time.sleep(0.01)  # a client backs off when nobody listens; no spinning


@contextmanager
def clients(
    target: Target, body: bytes, per_kind: int, window: Window, tally: Tally
) -> Iterator[None]:
    """`per_kind` closed-loop clients of each kind, stopped (and joined) on exit."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(kind, target, body, window, tally, stop))
        for kind in KINDS
        for _ in range(per_kind)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def start(port: int, cache_dir: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python -m services.classify` on `port` (shared with REUSE_PORT when env says so)."""
    settings = {
        **os.environ,
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,
        "MODEL_CACHE_DIR": str(cache_dir),
        "ONNX_INTRA_OP_THREADS": "1",
        "SERVER_PROCESSES": "1",  # the rounds start and stop single processes themselves
        "LOG_LEVEL": "WARNING",
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.classify", "--port", str(port)],
            cwd=ROOT,
            env=settings,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(metrics_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until `proc` reports ready on its metrics (a port of its own with REUSE_PORT)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode} while starting")
        try:
            if 'modelplane_ready{service="classify"} 1.0' in httpx.get(metrics_url, timeout=2).text:
                time.sleep(0.1)  # ready is reported just before the port is joined
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{metrics_url}: not ready after {timeout_s}s")


def terminate(proc: subprocess.Popen[bytes], window: Window, timeout_s: float) -> float:
    """SIGTERM `proc` with the window open until it exits; the seconds that took."""
    with window.opened():
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SystemExit(f"the process did not exit within {timeout_s}s of SIGTERM") from None
        return time.monotonic() - signalled


@dataclass(frozen=True)
class Result:
    """What `shutdowns` measured: the tally and every shutdown's duration."""

    tally: Tally
    seconds: list[float]


class Target:
    """The URL the clients call; a one-process run moves it to a fresh port every round, so
    a client refused by the process that stopped never reaches the next one while it loads."""

    def __init__(self) -> None:
        self.url = ""


def shutdowns(
    cache_dir: Path,
    log: Path,
    *,
    rounds: int,
    processes: int,
    per_kind: int = 2,
    load_s: float = 0.3,
    env: dict[str, str] | None = None,
    exit_timeout_s: float = 30,
) -> Result:
    """`rounds` SIGTERMs under load (see the module docstring); every process is stopped."""
    shared = processes > 1
    env = {**(env or {}), **({"REUSE_PORT": "true"} if shared else {})}
    window, tally, seconds, target = Window(), Tally(), [], Target()
    port = free_port()
    with ExitStack() as stack:
        running: list[subprocess.Popen[bytes]] = []

        def launch(port: int) -> None:
            # on a shared port /readyz may be another process's answer: ask this one's metrics
            metrics_port = free_port() if shared else port
            more = {"METRICS_PORT": str(metrics_port)} if shared else {}
            proc = start(port, cache_dir, log, {**env, **more})
            stack.callback(stop, proc)
            running.append(proc)
            wait_ready(f"http://127.0.0.1:{metrics_port}/metrics", proc)
            target.url = f"http://127.0.0.1:{port}/v1/classify"

        for _ in range(processes):
            launch(port)
        stack.enter_context(clients(target, digit_body(), per_kind, window, tally))
        for done in range(1, rounds + 1):
            time.sleep(load_s)  # the clients are in full flow when the signal comes
            seconds.append(terminate(running.pop(0), window, exit_timeout_s))
            if shared or done < rounds:
                launch(port if shared else free_port())
    return Result(tally, seconds)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop by PID whatever a round left running (SIGKILL if SIGTERM is not enough)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report(result: Result, processes: int) -> str:
    """Failures per 1,000 requests in the window per client kind, and the shutdown times."""
    tally = result.tally
    lines = [
        f"{len(result.seconds)} shutdowns, {processes} process(es) on the port",
        "| client      | sent | answered | lost | error | failed per 1k sent | refused |",
        "|-------------|------|----------|------|-------|--------------------|---------|",
    ]
    for kind in KINDS:
        refused = tally.count(kind, "refused")
        sent = tally.total(kind) - refused
        bad = tally.count(kind, "lost") + tally.count(kind, "error")
        lines.append(
            f"| {kind:<11} | {sent:>4} | {tally.count(kind, 'ok'):>8} "
            f"| {tally.count(kind, 'lost'):>4} | {tally.count(kind, 'error'):>5} "
            f"| {1000 * bad / max(1, sent):>18.1f} | {refused:>7} |"
        )
    s = result.seconds
    lines.append(
        f"shutdown time (SIGTERM to exit): median {statistics.median(s):.2f} s, max {max(s):.2f} s"
    )
    lines += [f"  first {what}: {detail}" for what, detail in sorted(tally.errors.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.shutdown", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path(".modelplane/cache"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2, help="closed-loop clients per kind")
    parser.add_argument("--load-s", type=float, default=0.3, help="load before each signal")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service")
    parser.add_argument("--log", type=Path, default=Path(".modelplane/shutdown.log"))
    args = parser.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(item.split("=", 1) for item in args.env)
    result = shutdowns(
        args.cache_dir,
        args.log,
        rounds=args.rounds,
        processes=args.processes,
        per_kind=args.clients,
        load_s=args.load_s,
        env=env,
    )
    print(report(result, args.processes))
    return 1 if result.tally.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
