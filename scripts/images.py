"""python -m scripts.images [TARGET...]: build docker/Dockerfile's images and report their sizes.

The base is python:3.11.11-slim-bookworm when the engine has it or can pull it. Where no
registry is reachable, it is a Debian bookworm base built here from Debian's packages
(docker/base.sh), and pip installs from the host's wheelhouse (docker/wheelhouse.sh) served on
loopback, because pip inside a build may neither reach nor verify the package index. Builds run
on the host network; layers are cached between runs. Starts dockerd when none runs (and stops it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts import k8s
from scripts.docker_engine import docker, docker_engine

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("serve-onnx", "mlflow", "serve-torch", "train")
DEFAULT_BASE = "python:3.11.11-slim-bookworm"
LOCAL_BASE = "modelplane/bookworm:12"
WHEELHOUSE = ROOT / "build" / "docker" / "wheelhouse"
LOGS = ROOT / "build" / "docker" / "logs"
#: fixed, because the build argument naming it is part of each layer's cache key
WHEEL_PORT = int(os.environ.get("MODELPLANE_WHEEL_PORT", "8470"))
#: third-party images of the compose file -> (substitute tag, its Dockerfile), Debian-built
SUBSTITUTES = {
    "postgres:16.6-bookworm": ("modelplane/postgres-debian:15", "docker/postgres.Dockerfile"),
    "prom/prometheus:v2.55.1": ("modelplane/prometheus-debian:2", "docker/prometheus.Dockerfile"),
}
PULL_TIMEOUT_S = 60


def have_image(tag: str) -> bool:
    return bool(docker("images", "-q", tag))


def pullable(tag: str) -> bool:
    """Whether the engine has `tag` or can pull it now."""
    if have_image(tag):
        return True
    print(f"==> docker pull {tag}", flush=True)
    try:
        result = subprocess.run(
            ["docker", "pull", tag], capture_output=True, text=True, timeout=PULL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return False
    if result.returncode != 0:
        print(f"    cannot pull {tag}: {result.stderr.strip().splitlines()[-1:]}", flush=True)
    return result.returncode == 0


def local_base() -> str:
    """The Debian base built from Debian's packages (docker/base.sh; kept between runs)."""
    subprocess.run([str(ROOT / "docker" / "base.sh"), LOCAL_BASE], check=True)
    return LOCAL_BASE


@contextmanager
def wheel_server(targets: tuple[str, ...]) -> Iterator[str]:
    """The wheelhouse of `targets` (fetched first, only what is missing) over HTTP on
    loopback; pip's arguments that install from it alone."""
    subprocess.run([str(ROOT / "docker" / "wheelhouse.sh"), *targets], check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(WHEEL_PORT)],
        cwd=WHEELHOUSE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{WHEEL_PORT}/"
        deadline = time.monotonic() + 10
        while subprocess.run(["curl", "-fsS", "-o", "/dev/null", url], check=False).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the wheel server did not start on 127.0.0.1:{WHEEL_PORT} (taken? set "
                    "MODELPLANE_WHEEL_PORT)"
                )
            time.sleep(0.2)
        print(f"==> wheelhouse served at {url} (pid {proc.pid})", flush=True)
        yield f"--no-index --find-links {url}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def build(tag: str, dockerfile: str, build_args: dict[str, str], target: str | None) -> float:
    """`docker build` on the host network, its steps printed, the full log under build/docker;
    the seconds it took."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{tag.replace('/', '_').replace(':', '_')}.log"
    cmd = ["docker", "build", "--network", "host", "-f", dockerfile, "-t", tag]
    cmd += ["--target", target] if target else []
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    print(f"==> building {tag} (log {log_path.relative_to(ROOT)})", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*cmd, "."], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if line.startswith(("Step ", "Successfully tagged")) or "ERROR" in line:
                print(f"    {line.rstrip()[:110]}", flush=True)
        status = proc.wait()
    if status != 0:
        sys.stdout.write("".join(lines[-40:]))
        raise SystemExit(f"building {tag} failed (exit {status}); full log: {log_path}")
    seconds = time.monotonic() - started
    print(f"    {tag} built in {seconds:.0f} s", flush=True)
    return seconds


def image_size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag)) / 1e6


def build_targets(targets: tuple[str, ...], use_wheelhouse: bool | None = None) -> None:
    """Build each Dockerfile target as modelplane/<target>:<version>; print the sizes."""
    base = DEFAULT_BASE
    if not pullable(DEFAULT_BASE):
        print(
            f"==> {DEFAULT_BASE} cannot be pulled here: using {LOCAL_BASE}, a Debian base "
            "built from Debian's packages by docker/base.sh",
            flush=True,
        )
        base = local_base()
    offline = base == LOCAL_BASE if use_wheelhouse is None else use_wheelhouse
    started = time.monotonic()
    with wheel_server(targets) if offline else _no_source() as pip_source:
        args = {"PYTHON_IMAGE": base, "PIP_SOURCE": pip_source}
        for target in targets:
            build(k8s.image(target), "docker/Dockerfile", args, target)
    total = time.monotonic() - started
    print("\n| image | size |\n|---|---|")
    for target in targets:
        print(f"| {k8s.image(target)} | {image_size_mb(k8s.image(target)):,.0f} MB |")
    if {"serve-torch", "train"} <= set(targets):
        print("(serve-torch and train share their base and PyTorch layers: on disk once)")
    print(f"==> images built in {total:.0f} s (base {base})", flush=True)


@contextmanager
def _no_source() -> Iterator[str]:
    yield ""


def substitute(upstream: str) -> str:
    """`upstream` when it can be had; else its Debian-built substitute (built if missing)."""
    if pullable(upstream):
        return upstream
    tag, dockerfile = SUBSTITUTES[upstream]
    print(
        f"==> {upstream} cannot be pulled here: substituting {tag} ({dockerfile}, from "
        "Debian's packages)",
        flush=True,
    )
    build(tag, dockerfile, {"BASE_IMAGE": local_base()}, None)
    return tag


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.images", description=__doc__)
    p.add_argument("targets", nargs="*", default=list(TARGETS), help=f"of {', '.join(TARGETS)}")
    p.add_argument(
        "--wheelhouse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="install from the host's wheelhouse (default: only on the local Debian base)",
    )
    args = p.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s) {sorted(unknown)}")
    with docker_engine():
        build_targets(tuple(args.targets), args.wheelhouse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
