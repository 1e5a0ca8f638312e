"""python -m scripts.stack: the docker-compose stack end to end, in containers, as a user runs it.

Builds the images (scripts.images; cached layers reused), starts docker-compose.yml with the
host-network override (docker-compose.host.yml) and, where no registry is reachable,
docker/compose.offline.yml (PostgreSQL and Prometheus from Debian's packages, no Grafana); runs
the `train` profile (quick trainings, then every export) through the containerised MLflow;
waits for the five services, sends each a real request and checks the answer; checks that
Prometheus scraped every service, that a moved @production alias is followed, that every
container runs as uid 10001 on a read-only root filesystem with a healthy HEALTHCHECK, and that
`down` leaves nothing running. Everything it starts is stopped on success and on failure.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from scripts import images
from scripts.docker_engine import docker, docker_engine
from scripts.stack_checks import CHECKS, check_alias_followed, check_prometheus
from services.catalog import SERVICES

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "modelplane-stack"
STATE = ROOT / "build" / "docker"
#: MLflow's and the services' ports: ARCHITECTURE.md's, unless a local run holds one (then any
#: free port: PORT, MLFLOW_PORT and Prometheus' targets follow)
DEFAULT_PORTS = {"mlflow": 5000} | {s.name: s.port for s in SERVICES}
#: the ports that cannot move (host network): they must be free first
PORTS = {"postgres": 5432, "prometheus": 9090}
HARDENED = ("mlflow", *(s.name for s in SERVICES))
READY_TIMEOUT_S = 900.0
PORTS_WAIT_S = 600.0


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin is installed, else docker-compose (v1)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit(
        "neither `docker compose` nor docker-compose (Debian: apt-get install docker-compose)"
    )


def moved_ports(ports: dict[str, int]) -> Path:
    """Prometheus' config with its targets on `ports` (a service or MLflow moved off its port
    because a local run holds it); written under build/docker/, never committed."""
    STATE.mkdir(parents=True, exist_ok=True)
    config = (ROOT / "observability" / "prometheus.yml").read_text()
    for name, port in ports.items():
        usual = f'"{name}:{DEFAULT_PORTS[name]}"'
        assert usual in config, f"observability/prometheus.yml: no {usual} target"
        config = config.replace(usual, f'"{name}:{port}"')
    path = STATE / "prometheus.yml"
    path.write_text(config)
    return path


class Compose:
    """docker compose with this stack's files, project name and environment."""

    def __init__(self, offline: bool, ports: dict[str, int]) -> None:
        files = ["docker-compose.yml", "docker-compose.host.yml"]
        files += ["docker/compose.offline.yml"] if offline else []
        self.ports = ports
        self.base = [*compose_command(), "-p", PROJECT]
        for name in files:
            self.base += ["-f", name]
        self.env = {
            **os.environ,
            "POSTGRES_PASSWORD": secrets.token_hex(12),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
            "RELOAD_INTERVAL_S": "5",
            "MLFLOW_PORT": str(ports["mlflow"]),
            "LOG_LEVEL": "INFO",
        }
        self.base = [*self.base[:3], "-f", self.resolved()]

    def resolved(self) -> str:
        """The files merged by `compose config`, less `ports:` on the host network: docker
        ignores them there, but docker-compose v1 refuses them ("network_mode is incompatible
        with port_bindings") and cannot drop a list an override inherits (v2: `!reset`)."""
        merged = yaml.safe_load(self("config", capture=True))
        for service in merged["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
        for svc in SERVICES:
            merged["services"][svc.name]["environment"]["PORT"] = str(self.ports[svc.name])
        config = f"{moved_ports(self.ports)}:/etc/prometheus/prometheus.yml:ro"
        prometheus = merged["services"]["prometheus"]
        prometheus["volumes"] = [
            config if str(v).startswith(str(ROOT / "observability" / "prometheus.yml")) else v
            for v in prometheus["volumes"]
        ]
        STATE.mkdir(parents=True, exist_ok=True)
        path = STATE / "compose.resolved.yml"  # holds this run's random passwords: removed after
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
        return str(path)

    def __call__(self, *args: str, capture: bool = False, check: bool = True) -> str:
        result = subprocess.run(
            [*self.base, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=capture,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or "")[-2000:] if capture else ""
            raise RuntimeError(f"compose {' '.join(args)} failed ({result.returncode}) {detail}")
        return (result.stdout or "").strip()

    def container(self, service: str) -> str:
        cid = self("ps", "-q", service, capture=True)
        if not cid:
            raise RuntimeError(f"no container for {service}")
        return cid.splitlines()[0]

    def running(self) -> list[str]:
        """Ids of this project's running containers (by label, whatever compose says)."""
        out = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}")
        return out.split()


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ports_free(timeout_s: float) -> None:
    """The stack's fixed ports (host network) must be free: wait a while for a local run
    (`make demo`, say) to end, then give up naming them."""
    deadline, reported = time.monotonic() + timeout_s, False
    while taken := [f"{name} ({port})" for name, port in PORTS.items() if port_taken(port)]:
        if time.monotonic() > deadline:
            raise SystemExit(f"ports in use on 127.0.0.1: {', '.join(taken)}; stop what holds them")
        if not reported:
            print(
                f"    waiting up to {timeout_s:.0f} s for {', '.join(taken)} to be free", flush=True
            )
            reported = True
        time.sleep(2)


def health(cid: str) -> str:
    return docker("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", cid)


def wait_healthy(compose: Compose, services: tuple[str, ...], timeout_s: float) -> None:
    """Until every service's HEALTHCHECK says healthy; progress every 30 s."""
    deadline, last_report = time.monotonic() + timeout_s, 0.0
    started = time.monotonic()
    while True:
        states = {name: health(compose.container(name)) for name in services}
        waiting = [name for name, state in states.items() if state != "healthy"]
        if not waiting:
            print(f"    all healthy after {time.monotonic() - started:.0f} s", flush=True)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not healthy after {timeout_s:.0f} s: {states}")
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            print(f"    {time.monotonic() - started:.0f} s: waiting for {states}", flush=True)
        time.sleep(3)


def check_hardening(compose: Compose) -> None:
    """uid 10001, read-only root filesystem, healthy: as the Dockerfile promises."""
    for name in HARDENED:
        cid = compose.container(name)
        user, read_only = docker(
            "inspect", "-f", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", cid
        ).split()
        uid = docker("exec", cid, "id", "-u")
        assert user == "10001:10001" and uid == "10001", f"{name}: user {user!r}, uid {uid}"
        assert read_only == "true", f"{name}: root filesystem is writable"
        probe = subprocess.run(
            ["docker", "exec", cid, "touch", "/opt/venv/x"], capture_output=True, check=False
        )
        assert probe.returncode != 0, f"{name}: could write to /opt/venv"
        assert health(cid) == "healthy", f"{name}: {health(cid)}"
        print(f"    {name}: uid 10001, read-only root, healthy", flush=True)


def dump_logs(compose: Compose) -> None:
    print("---- last log lines of each container ----", flush=True)
    compose("logs", "--no-color", "--tail=30", check=False)


def run_stack(offline: bool, keep_going: bool) -> dict[str, Any]:
    """The stack's checks; compose down (volumes too) afterwards, whatever happened."""
    ports = {name: free_port() if port_taken(p) else p for name, p in DEFAULT_PORTS.items()}
    moved = {name: p for name, p in ports.items() if p != DEFAULT_PORTS[name]}
    if moved:
        print(f"    ports taken by a local run; moved: {moved}", flush=True)
    compose = Compose(offline, ports)
    wait_ports_free(PORTS_WAIT_S)
    timings: dict[str, Any] = {}
    try:
        say("compose up: postgres, mlflow, prometheus")
        started = time.monotonic()
        compose("up", "-d", "--no-build", "postgres", "mlflow", "prometheus")
        wait_healthy(compose, ("postgres", "mlflow"), 300)
        timings["mlflow_ready_s"] = round(time.monotonic() - started)
        for stage in ("train", "export"):
            say(f"compose --profile train run --rm {stage}: modelplane {stage} all --quick")
            started = time.monotonic()
            job = ("modelplane", stage, "all", "--quick")
            compose("--profile", "train", "run", "--rm", stage, *job)
            timings[f"{stage}_s"] = timings.get(f"{stage}_s", 0) + round(time.monotonic() - started)
        say("compose up: the five services")
        started = time.monotonic()
        compose("up", "-d", "--no-build")
        wait_healthy(compose, tuple(s.name for s in SERVICES), READY_TIMEOUT_S)
        timings["services_ready_s"] = round(time.monotonic() - started)
        say("one real request per service, through its port")
        for name, check in CHECKS.items():
            print(f"    {name}: {check(f'http://127.0.0.1:{ports[name]}')}", flush=True)
        say("Prometheus scraped every service")
        print(f"    {check_prometheus('http://127.0.0.1:9090')}", flush=True)
        say("a moved classify@production is followed (RELOAD_INTERVAL_S=5)")
        mlflow, classify = (f"http://127.0.0.1:{ports[name]}" for name in ("mlflow", "classify"))
        print(f"    {check_alias_followed(mlflow, classify)}", flush=True)
        say("uid 10001, read-only root filesystem, healthy HEALTHCHECKs")
        check_hardening(compose)
    except BaseException:
        dump_logs(compose)
        if keep_going:
            print("--keep: the stack stays up; stop it with compose down -v", flush=True)
            raise
        raise
    finally:
        if not keep_going:
            say("compose down -v (containers, volumes)")
            compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False)
            left = compose.running()
            if left:
                docker("rm", "-f", *left, check=False)
                raise RuntimeError(f"compose down left containers running: {left}")
            print("    nothing left running", flush=True)
            (STATE / "compose.resolved.yml").unlink(missing_ok=True)
    return timings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__)
    p.add_argument("--no-build", action="store_true", help="use the images as they are")
    p.add_argument("--keep", action="store_true", help="leave the stack up on failure (debug)")
    args = p.parse_args(argv)
    started = time.monotonic()
    with docker_engine():
        if not args.no_build:
            images.build_targets(images.TARGETS)
        offline = images.substitute("postgres:16.6-bookworm") != "postgres:16.6-bookworm"
        if offline:
            images.substitute("prom/prometheus:v2.55.1")
            say(
                "no registry: Grafana (not in Debian) is not run; PostgreSQL and Prometheus are "
                "Debian's (docker/compose.offline.yml)"
            )
        timings = run_stack(offline, args.keep)
    say(f"stack test passed in {time.monotonic() - started:.0f} s: {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
