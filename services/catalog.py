"""The one table of the services: adding a service is a folder services/<name>/ plus a row here.

Everything else that lists the services reads this table: `python -m scripts.deploy` writes
k8s/base/<name>.yaml, docker-compose.yml's service blocks, Prometheus' scrape targets, the
Makefile's serve-* targets and README's services table from it; the load tests, the services'
default ports and tests/unit/test_catalog.py (which fails when any of those drift) read it too.
Pure data, stdlib only: scripts, load tests and every `python -m services.<name>` import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServiceEntry:
    """One service, named the same everywhere: folder, compose service, Deployment, metric label."""

    name: str
    #: its port everywhere: local runs, compose, the k8s Service (ARCHITECTURE.md)
    port: int
    #: the docker/Dockerfile target (image) it runs in
    image: str
    #: the pyproject extra its image installs for it (`pip install .[<extra>]`)
    extra: str
    #: the registered model names it serves (each `models:/<name>@production` by default)
    models: tuple[str, ...]
    #: what it does, in a few words (`make help`, README)
    summary: str
    #: Kubernetes CPU (request = limit: its threads are sized from it) and memory per pod
    cpu: str
    memory: str
    #: the HPA's ceiling
    max_replicas: int
    #: the p99 latency objective (observability/rules/modelplane.yml records the same)
    slo_p99_s: float
    #: its Open Inference Protocol gRPC port (services with tensor models only)
    grpc_port: int | None = None

    @property
    def module(self) -> str:
        """What `python -m` runs: services.<name>."""
        return f"services.{self.name}"

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def service_class(self) -> Any:
        """The `shared.service.Service` subclass named `name` in services/<name>/service.py
        (imports the service: its runtime dependencies must be installed)."""
        module = importlib.import_module(f"{self.module}.service")
        for value in vars(module).values():
            named = isinstance(value, type) and getattr(value, "name", None) == self.name
            if named and hasattr(value, "endpoints"):
                return value
        raise LookupError(f"{module.__name__} declares no service named {self.name!r}")


SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry(
        name="classify",
        port=8001,
        image="serve-onnx",
        extra="serve",
        models=("classify",),
        summary="classify digits (ONNX)",
        cpu="1",
        memory="1Gi",
        max_replicas=8,
        slo_p99_s=0.25,
        grpc_port=9001,
    ),
    ServiceEntry(
        name="similarity",
        port=8002,
        image="serve-onnx",
        extra="similarity",
        models=("similarity",),
        summary="embed, compare and search digits (ONNX + FAISS)",
        cpu="1",
        memory="1Gi",
        max_replicas=8,
        slo_p99_s=0.25,
        grpc_port=9002,
    ),
    ServiceEntry(
        name="explain",
        port=8003,
        image="serve-torch",
        extra="explain",
        models=("classify",),
        summary="explain the classify model (Captum)",
        cpu="2",
        memory="3Gi",
        max_replicas=4,
        slo_p99_s=5.0,
    ),
    ServiceEntry(
        name="generate",
        port=8004,
        image="serve-torch",
        extra="generate",
        models=("generate",),
        summary="generate digit images (diffusion)",
        cpu="2",
        memory="4Gi",
        max_replicas=4,
        slo_p99_s=7.5,
    ),
    ServiceEntry(
        name="text",
        port=8005,
        image="serve-torch",
        extra="text",
        models=("text-classify", "text-generate"),
        summary="language ID and code summaries",
        cpu="1",
        memory="2Gi",
        max_replicas=8,
        slo_p99_s=1.0,
        grpc_port=9005,
    ),
)
#: the services' names, in table order
NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)


def entry(name: str) -> ServiceEntry:
    """The row of service `name`; a KeyError that lists the known names otherwise."""
    for svc in SERVICES:
        if svc.name == name:
            return svc
    raise KeyError(f"unknown service {name!r}; known: {', '.join(NAMES)}")


def by_port(port: int) -> ServiceEntry:
    """The row of the service listening on `port`."""
    for svc in SERVICES:
        if svc.port == port:
            return svc
    raise KeyError(f"no service on port {port}; ports: {', '.join(str(s.port) for s in SERVICES)}")


def by_image(image: str) -> tuple[ServiceEntry, ...]:
    """The services that run in docker/Dockerfile target `image`, in table order."""
    return tuple(svc for svc in SERVICES if svc.image == image)


def images() -> tuple[str, ...]:
    """The serving images, in order of first use."""
    return tuple(dict.fromkeys(svc.image for svc in SERVICES))
