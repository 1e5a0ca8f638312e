"""Deployment files, checked offline: compose validates, every kustomize overlay renders and
validates against the Kubernetes schemas, and compose, k8s and the README agree (that they
name exactly the catalog's services, and match what scripts.deploy writes: test_catalog.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scripts import k8s
from services.catalog import NAMES, SERVICES
from training.all import commands, parse_args

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("k8s/overlays/dev", "k8s/overlays/prod", "k8s/jobs", "k8s/overlays/rollout")
KUBERNETES_VERSION = "1.32.0"
#: custom resources (Prometheus Operator): no schema in kubernetes-validate
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def run(*cmd: str) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return done.stdout


def rendered(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(run("kubectl", "kustomize", overlay)) if d]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert shutil.which("docker-compose"), "docker-compose missing: `make test` installs it"
    out = run(
        "docker-compose",
        "--env-file",
        ".env.example",
        "--profile",
        "train",
        "config",
    )
    return yaml.safe_load(out)


def readme_settings() -> set[str]:
    """The variable names of the README's configuration table."""
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", text, flags=re.MULTILINE))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_validates_against_the_schemas(overlay: str) -> None:
    documents = rendered(overlay)
    assert documents
    for doc in documents:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            assert doc["spec"].get("endpoints") or doc["spec"].get("groups"), doc["kind"]
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS[:2])
def test_every_service_deployment_is_probed_limited_hardened_and_autoscaled(overlay: str) -> None:
    documents = rendered(overlay)
    deployments = by_kind(documents, "Deployment")
    autoscalers = by_kind(documents, "HorizontalPodAutoscaler")
    budgets = by_kind(documents, "PodDisruptionBudget")
    assert set(deployments) == set(NAMES) | {"mlflow"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{name} lacks {probe}"
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
    for svc in SERVICES:
        container = deployments[svc.name]["spec"]["template"]["spec"]["containers"][0]
        # liveness never depends on the model or the registry; readiness does
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert "preStop" in container["lifecycle"]
        target = autoscalers[svc.name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", svc.name)
        assert svc.name in budgets
        threads = {e["name"]: e for e in container["env"]}["ONNX_INTRA_OP_THREADS"]
        assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_prod_keeps_two_replicas_and_one_available_through_disruptions() -> None:
    documents = rendered("k8s/overlays/prod")
    for svc in SERVICES:
        assert by_kind(documents, "Deployment")[svc.name]["spec"]["replicas"] == 2
        assert by_kind(documents, "HorizontalPodAutoscaler")[svc.name]["spec"]["minReplicas"] == 2
        assert by_kind(documents, "PodDisruptionBudget")[svc.name]["spec"]["minAvailable"] == 1


def test_compose_runs_the_same_images_commands_and_ports_as_k8s(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(NAMES) <= set(services)
    for svc in SERVICES:
        entry = services[svc.name]
        assert entry["image"] == k8s.image(svc.image)
        assert entry["command"] == ["modelplane", "serve", svc.name]
        assert entry["environment"]["PORT"] == str(svc.port)
        assert entry["depends_on"]["mlflow"]["condition"] == "service_healthy"
        assert entry["read_only"] is True and entry["user"] == "10001:10001"
        # "127.0.0.1:8001:8001" (compose v1) or {"target": 8001, ...} (v2)
        published = {
            int(p["target"] if isinstance(p, dict) else p.split(":")[-1].split("/")[0])
            for p in entry["ports"]
        }
        assert published == {svc.port, *([svc.grpc_port] if svc.grpc_port else [])}
    for job in ("train", "export"):
        assert services[job]["profiles"] == ["train"]
        assert services[job]["command"] == ["modelplane", job, "all"]


def test_every_setting_compose_and_k8s_pass_is_in_the_readme(compose: dict[str, Any]) -> None:
    documented = readme_settings()
    assert "MODEL_URI" in documented  # the table was found
    names: set[str] = set()
    for svc in SERVICES:
        names |= set(compose["services"][svc.name]["environment"])
    for doc in rendered("k8s/overlays/prod"):
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] != "mlflow":
            names |= {e["name"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert names - documented == set()


def test_dockerfile_builds_four_non_root_images_with_health_checks() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE))
    assert {"serve-onnx", "serve-torch", "train", "mlflow"} <= targets
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim", text, flags=re.MULTILINE)
    assert text.count("USER 10001:10001") == 2  # the runtime stage and mlflow
    assert "HEALTHCHECK" in text and "/readyz" in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" or "*" in ignored  # everything is excluded unless listed


def test_training_all_runs_every_task_in_order_and_passes_quick() -> None:
    args = parse_args(["export", "--only", "generate,classify", "--quick"])
    steps = commands(args.stage, args.only, args.quick)
    assert [task for task, _ in steps] == ["classify", "generate"]
    assert steps[0][1][1:] == ["-m", "training.export", "classify", "--quick"]
    with pytest.raises(SystemExit):
        parse_args(["train", "--only", "nope"])


def test_the_rollout_overlay_splits_traffic_and_runs_the_gate_on_prometheus() -> None:
    documents = rendered("k8s/overlays/rollout")
    settings = by_kind(documents, "ConfigMap")["modelplane-settings"]["data"]
    assert (settings["CANARY_PERCENT"], settings["SHADOW_PERCENT"]) == ("10", "50")
    assert float(settings["RELOAD_INTERVAL_S"]) > 0  # the replicas follow both aliases
    job = by_kind(documents, "Job")["rollout-classify"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["modelplane", "rollout"]
    assert "--prometheus=$(PROMETHEUS_URL)" in command
    from modelplane.rollout import parse_args  # the Job's flags are the gate's own

    args = parse_args(command[2:])
    assert (args.name, args.service, args.min_agreement) == ("classify", "classify", 0.9)
    base = by_kind(rendered("k8s/overlays/prod"), "ConfigMap")["modelplane-settings"]["data"]
    assert (base["CANARY_PERCENT"], base["SHADOW_PERCENT"]) == ("0", "0")
