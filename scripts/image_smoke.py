"""python -m scripts.image_smoke: the serve-onnx image alone, as CI checks it in minutes.

Builds serve-onnx (scripts.images: the local Debian base and the wheelhouse where no registry
is reachable), runs classify in it from a bundle in a mounted model cache (no MLflow: the
service serves the verified cache when the registry is unreachable), hardened as compose runs
it (uid 10001, read-only root, no capabilities, host network on loopback), waits for its
HEALTHCHECK to report healthy, and sends one real digit. The container is removed by its id.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scripts import images, k8s
from scripts.docker_engine import docker, docker_engine
from tests.tinymodels import digit_png, seed_cache

IMAGE = k8s.image("serve-onnx")
HEALTHY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(cid: str, timeout_s: float) -> float:
    started = time.monotonic()
    while True:
        state = docker("inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", cid)
        if state == "running healthy":
            return time.monotonic() - started
        if not state.startswith("running") or time.monotonic() - started > timeout_s:
            print(docker("logs", "--tail", "40", cid, check=False), flush=True)
            raise AssertionError(f"classify container is {state!r}")
        time.sleep(1)


def smoke(cache_dir: Path) -> str:
    port = free_port()
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: serve from the cache
    cid = docker(
        "run", "-d", "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--user", "10001:10001", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges:true",
        "-v", f"{cache_dir}:/var/cache/modelplane",
        "-e", f"PORT={port}", "-e", "HOST=127.0.0.1", "-e", f"MLFLOW_TRACKING_URI={unreachable}",
        "-e", "REGISTRY_TIMEOUT_S=1", "-e", "ONNX_INTRA_OP_THREADS=1",
        IMAGE, "modelplane", "serve", "classify",
    )  # fmt: skip
    try:
        print(f"==> classify in {IMAGE} on 127.0.0.1:{port} (container {cid[:12]})", flush=True)
        waited = wait_healthy(cid, HEALTHY_TIMEOUT_S)
        user, read_only = docker(
            "inspect", "-f", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", cid
        ).split()
        assert (user, read_only) == ("10001:10001", "true"), (user, read_only)
        png, digit = digit_png(0)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/classify",
            json={"image": base64.b64encode(png).decode()},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        label = answer["predictions"][0]["label"]
        assert label == str(digit), f"predicted {label} for a {digit}: {answer}"
        return f"healthy after {waited:.0f} s; predicted {label} for a {digit}, {answer['model']}"
    finally:
        docker("rm", "-f", cid, check=False)


def main() -> int:
    started = time.monotonic()
    with docker_engine():
        images.build_targets(("serve-onnx",))
        with tempfile.TemporaryDirectory(prefix="modelplane-smoke-") as tmp:
            cache_dir = Path(tmp) / "cache"
            seed_cache(cache_dir, fitted=True)
            for path in (cache_dir, *cache_dir.rglob("*")):  # the container's uid writes there
                if os.geteuid() == 0:
                    os.chown(path, 10001, 10001)
                else:
                    path.chmod(0o777)
            print(f"==> {smoke(cache_dir)}", flush=True)
    print(f"==> serve-onnx image check passed in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
