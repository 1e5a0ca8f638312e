"""A Docker engine for the image and stack scripts: the running one, or a dockerd started here.

The dockerd started here has no bridge network and no iptables rules (`--bridge=none`): every
container and build runs on the host network, so traffic stays on loopback and never reaches
docker's private address range. It is stopped (by its pid) when the `with` block ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_S = 60.0
STOP_S = 30.0


def engine_running() -> bool:
    """Whether `docker info` reaches a daemon."""
    result = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    return result.returncode == 0


def _install_hint() -> str:
    return "no dockerd on PATH: install Docker's engine (Debian: apt-get install docker.io)"


@contextmanager
def docker_engine() -> Iterator[None]:
    """A reachable Docker daemon for the block: the running one, else one started (and stopped)
    here."""
    if shutil.which("docker") is None:
        raise SystemExit("no docker client on PATH (Debian: apt-get install docker.io)")
    if engine_running():
        print("==> docker: using the running engine", flush=True)
        yield
        return
    sbin = Path("/usr/sbin/dockerd")  # root's PATH has it; a user's may not
    dockerd = shutil.which("dockerd") or (str(sbin) if sbin.exists() else None)
    if dockerd is None:
        raise SystemExit(_install_hint())
    state = Path(tempfile.mkdtemp(prefix="modelplane-dockerd-"))
    log = state / "dockerd.log"
    print(f"==> docker: starting dockerd (host network only, no bridge; log {log})", flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                dockerd,
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                f"--exec-root={state / 'exec'}",
                f"--pidfile={state / 'dockerd.pid'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_S
        while not engine_running():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"dockerd did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield
    finally:
        print(f"==> docker: stopping the dockerd started here (pid {proc.pid})", flush=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(state, ignore_errors=True)


def docker(*args: str, check: bool = True, capture: bool = True) -> str:
    """Run `docker ARGS`; its stdout (stripped) when captured."""
    result = subprocess.run(
        ["docker", *args], check=False, capture_output=capture, text=True, env=os.environ.copy()
    )
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if capture else ""
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}): {detail}")
    return (result.stdout or "").strip()
