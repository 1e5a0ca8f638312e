"""python -m scripts.k8s: write k8s/base/ from services/catalog.py (and the rules).

Every service shares one shape (Deployment, Service, HPA, PDB), so the manifests are written by
this script from the catalog's rows (port, image, CPU, memory, max replicas) rather than by
hand, and a test fails when the committed files drift from it (the
PrometheusRule is observability/rules/modelplane.yml, the one source of the alerts). The
overlays (k8s/overlays/dev, prod) and the jobs (k8s/jobs) are plain kustomize, edited by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from services.catalog import SERVICES, ServiceEntry

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "k8s" / "base"
PART_OF = {"app.kubernetes.io/part-of": "modelplane"}
REGISTRY = "modelplane"
VERSION = "0.1.0"
CACHE = "/var/cache/modelplane"
#: /metrics is served on its own port, so a NetworkPolicy can admit only Prometheus to it
METRICS_PORT = 9100


#: the HPA's custom metric (Prometheus adapter): requests waiting for a batch, per pod
QUEUE_METRIC = "modelplane_queue_depth"
QUEUE_TARGET = "8"


def image(target: str) -> str:
    return f"{REGISTRY}/{target}:{VERSION}"


def labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component, **PART_OF}


def _http_probe(path: str, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def writable_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The only writable paths of a read-only root filesystem: the model cache and /tmp."""
    volumes = [
        {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    mounts = [{"name": "cache", "mountPath": CACHE}, {"name": "tmp", "mountPath": "/tmp"}]
    return volumes, mounts


def _cpu_limit_env(name: str) -> dict[str, Any]:
    """An env var equal to the container's CPU limit in whole cores (rounded up)."""
    return {
        "name": name,
        "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}},
    }


def container_ports(svc: ServiceEntry) -> list[dict[str, Any]]:
    """HTTP, the Open Inference Protocol over gRPC (tensor models; the service listens on its
    catalog gRPC port when HTTP is on its catalog port) and the metrics port."""
    grpc = [{"name": "grpc", "containerPort": svc.grpc_port}] if svc.grpc_port else []
    return [
        {"name": "http", "containerPort": svc.port},
        *grpc,
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]


def deployment(svc: ServiceEntry) -> dict[str, Any]:
    volumes, mounts = writable_volumes()
    env = [
        {"name": "PORT", "value": str(svc.port)},
        {"name": "HOST", "value": "0.0.0.0"},
        {"name": "METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "METRICS_ADDR", "value": "0.0.0.0"},
        {"name": "MODEL_CACHE_DIR", "value": CACHE},
        # one uvicorn worker per pod; onnxruntime / torch threads = the CPU limit
        _cpu_limit_env("ONNX_INTRA_OP_THREADS"),
        _cpu_limit_env("PREPROCESS_WORKERS"),
        {
            "name": "API_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": "modelplane-secrets", "key": "API_TOKEN", "optional": True}
            },
        },
    ]
    container = {
        "name": svc.name,
        "image": image(svc.image),
        "imagePullPolicy": "IfNotPresent",
        "command": ["modelplane", "serve", svc.name],
        "ports": container_ports(svc),
        "envFrom": [{"configMapRef": {"name": "modelplane-settings"}}],
        "env": env,
        "resources": {
            "requests": {"cpu": svc.cpu, "memory": svc.memory},
            "limits": {"cpu": svc.cpu, "memory": svc.memory},
        },
        # Starting = the process answers /livez (up to 5 min: imports, torch); readiness = the
        # model is loaded and warmed up (registry downloads may take long); liveness never
        # depends on the registry or the model, so a registry outage never restarts pods.
        "startupProbe": _http_probe("/livez", 5, 60),
        "readinessProbe": _http_probe("/readyz", 5, 3),
        "livenessProbe": _http_probe("/livez", 10, 3),
        # endpoints are removed before SIGTERM reaches uvicorn: no request is dropped
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": svc.name, "labels": labels(svc.name, "service")},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {"app.kubernetes.io/name": svc.name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels(svc.name, "service")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(svc: ServiceEntry) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "labels": labels(svc.name, "service")},
        "spec": {
            "selector": {"app.kubernetes.io/name": svc.name},
            "ports": [
                {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                # gRPC is HTTP/2 in cleartext: say so, for meshes and Gateway API routes
                | ({"appProtocol": "kubernetes.io/h2c"} if p["name"] == "grpc" else {})
                for p in container_ports(svc)
            ],
        },
    }


def autoscaler(svc: ServiceEntry) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": svc.name, "labels": labels(svc.name, "service")},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": svc.name},
            "minReplicas": 1,
            "maxReplicas": svc.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_METRIC},
                        "target": {"type": "AverageValue", "averageValue": QUEUE_TARGET},
                    },
                },
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def disruption_budget(svc: ServiceEntry) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": svc.name, "labels": labels(svc.name, "service")},
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": svc.name}},
        },
    }


def prometheus_rule() -> dict[str, Any]:
    """observability/rules/modelplane.yml as a Prometheus Operator PrometheusRule: one source."""
    rules = yaml.safe_load((ROOT / "observability" / "rules" / "modelplane.yml").read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "modelplane", "labels": labels("modelplane", "monitoring")},
        "spec": {"groups": rules["groups"]},
    }


def service_files() -> dict[str, list[dict[str, Any]]]:
    files = {
        f"{svc.name}.yaml": [deployment(svc), service(svc), autoscaler(svc), disruption_budget(svc)]
        for svc in SERVICES
    }
    return {**files, "prometheus-rules.yaml": [prometheus_rule()]}


def render(documents: list[dict[str, Any]]) -> str:
    header = "# generated by `python -m scripts.k8s`; do not edit\n"
    return header + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in documents)


def main() -> int:
    for name, documents in service_files().items():
        (BASE / name).write_text(render(documents))
        print(f"wrote {(BASE / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
