"""KServe and autoscaling manifests, checked offline: they render with kustomize, validate
against KServe's API (k8s/kserve/schema, from its SDK's models) and KEDA's (cloudcoil's models of
its CRDs), and agree with the catalog and with each other."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from referencing import Registry, Resource

from services.catalog import SERVICES, entry

ROOT = Path(__file__).resolve().parents[2]
KSERVE_SCHEMA = ROOT / "k8s" / "kserve" / "schema" / "kserve-0.21.0.json"
ADAPTER_RULES = ROOT / "k8s" / "autoscaling" / "prometheus-adapter" / "config.yaml"
KUBERNETES_VERSION = "1.37.0"  # what scripts/kserve_schema.py points KServe's embedded types at
TENSOR_SERVICES = sorted(s.name for s in SERVICES if s.grpc_port)
KINDS = {
    "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
    "InferenceService": "V1beta1InferenceService",
}


def run(*cmd: str) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return done.stdout


@cache
def rendered(directory: str) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(run("kubectl", "kustomize", directory)) if d)


def of_kind(directory: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in rendered(directory) if d["kind"] == kind}


@cache
def kserve_registry() -> Registry:
    kubernetes = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{KUBERNETES_VERSION}-local-strict"
        / "_definitions.json"
    )
    return Registry().with_resources(
        [
            (KSERVE_SCHEMA.name, Resource.from_contents(json.loads(KSERVE_SCHEMA.read_text()))),
            (
                f"kubernetes-{KUBERNETES_VERSION}.json",
                Resource.from_contents(json.loads(kubernetes.read_text())),
            ),
        ]
    )


def kserve_errors(doc: dict[str, Any]) -> list[str]:
    """What KServe's API refuses in `doc` (unknown fields, wrong types, missing required)."""
    schema = {"$ref": f"{KSERVE_SCHEMA.name}#/definitions/{KINDS[doc['kind']]}"}
    validator = jsonschema.Draft7Validator(schema, registry=kserve_registry())
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def kserve_documents() -> list[dict[str, Any]]:
    docs = [*rendered("k8s/kserve/runtimes"), *rendered("k8s/kserve")]
    return [d for d in docs if d["kind"] in KINDS]


def test_kserve_manifests_validate_against_kserve_api() -> None:
    documents = kserve_documents()
    assert {d["kind"] for d in documents} == set(KINDS)
    for doc in documents:
        assert doc["apiVersion"].startswith("serving.kserve.io/")
        assert not kserve_errors(doc), (doc["metadata"]["name"], kserve_errors(doc))


@pytest.mark.parametrize(
    ("kind", "path", "typo"),
    [
        ("InferenceService", ("spec", "predictor", "model"), "protocolVersions"),
        ("ClusterServingRuntime", ("spec",), "supportedModelFormat"),
        ("ClusterServingRuntime", ("spec", "containers", 0), "readinesProbe"),
    ],
)
def test_kserve_validation_refuses_a_misspelt_field(
    kind: str, path: tuple[Any, ...], typo: str
) -> None:
    doc = copy.deepcopy(next(d for d in kserve_documents() if d["kind"] == kind))
    target = doc
    for step in path:
        target = target[step]
    target[typo] = "v2"
    assert any(typo in e for e in kserve_errors(doc)), kserve_errors(doc)


def test_every_tensor_service_has_an_inference_service_on_its_image_runtime() -> None:
    runtimes = of_kind("k8s/kserve/runtimes", "ClusterServingRuntime")
    services = of_kind("k8s/kserve", "InferenceService")
    assert sorted(services) == TENSOR_SERVICES
    for name, isvc in services.items():
        svc = entry(name)
        predictor = isvc["spec"]["predictor"]
        model = predictor["model"]
        runtime = runtimes[model["runtime"]]
        container = runtime["spec"]["containers"][0]
        assert container["image"] == f"modelplane/{svc.image}:0.1.0"
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == (
            "RawDeployment"  # two ports (REST + gRPC): Knative's serverless mode allows one
        )
        limits = {"cpu": svc.cpu, "memory": svc.memory}
        assert model["resources"] == {"requests": limits, "limits": limits}
        assert predictor["maxReplicas"] == svc.max_replicas
        # MLflow's and the services' network policies admit pods by these labels
        assert predictor["labels"]["app.kubernetes.io/component"] == "service"
        assert predictor["labels"]["app.kubernetes.io/name"] == name
        metrics = predictor["autoScaling"]["metrics"]
        assert len(metrics) == 2  # queue depth and requests in flight, as the ScaledObjects
        for metric in metrics:
            assert metric["external"]["metric"]["backend"] == "prometheus"
            assert f'service="{name}"' in metric["external"]["metric"]["query"]


def test_runtimes_speak_v2_rest_and_grpc_on_the_ports_kserve_expects() -> None:
    runtimes = of_kind("k8s/kserve/runtimes", "ClusterServingRuntime")
    assert sorted(runtimes) == sorted({f"modelplane-{s.image}" for s in SERVICES if s.grpc_port})
    for runtime in runtimes.values():
        assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
        (container,) = runtime["spec"]["containers"]
        assert container["name"] == "kserve-container"
        # as docker/Dockerfile and k8s/base run it, the service named by the InferenceService
        assert [*container["command"], *container["args"]] == ["modelplane", "serve", "{{.Name}}"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert container["ports"][0]["name"] == "http1"  # KServe routes HTTP to the first port
        assert env["PORT"] == str(ports["http1"])
        assert env["GRPC_PORT"] == str(ports["h2c"])
        assert env["METRICS_PORT"] == str(ports["metrics"])
        annotations = runtime["spec"]["annotations"]
        assert annotations["prometheus.kserve.io/port"] == str(ports["metrics"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_kserve_overlay_replaces_the_plain_deployments_of_the_tensor_services() -> None:
    deployments = of_kind("k8s/kserve", "Deployment")
    autoscalers = of_kind("k8s/kserve", "HorizontalPodAutoscaler")
    plain = sorted(s.name for s in SERVICES if not s.grpc_port)
    assert sorted(set(deployments) - {"mlflow"}) == plain
    assert sorted(autoscalers) == plain
    namespaces = {d["metadata"].get("namespace") for d in rendered("k8s/kserve")}
    assert namespaces == {"modelplane", None}  # None: the Namespace itself
    for doc in rendered("k8s/kserve"):
        if doc["kind"] in {"Deployment", "Service", "NetworkPolicy", "ConfigMap"}:
            kubernetes_validate.validate(doc, "1.32.0", strict=True)


def scaled_objects() -> dict[str, dict[str, Any]]:
    return of_kind("k8s/autoscaling/keda", "ScaledObject")


def test_keda_scaled_objects_validate_against_keda_crd_models() -> None:
    objects = scaled_objects()
    assert sorted(objects) == sorted(s.name for s in SERVICES)
    for doc in objects.values():
        parsed = ScaledObject.model_validate(doc)
        # the models ignore unknown fields: a field that does not survive the round trip is one
        # KEDA does not know (a typo KEDA itself would drop silently)
        assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == doc


def test_keda_scaled_objects_scale_each_deployment_on_demand_not_cpu() -> None:
    deployments = of_kind("k8s/autoscaling/keda", "Deployment")
    assert not of_kind("k8s/autoscaling/keda", "HorizontalPodAutoscaler")  # KEDA writes its own
    for name, doc in scaled_objects().items():
        spec = doc["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert spec["maxReplicaCount"] == entry(name).max_replicas
        triggers = {t["name"]: t for t in spec["triggers"]}
        assert set(triggers) == {"queue-depth", "in-flight"}
        for trigger in triggers.values():
            assert trigger["type"] == "prometheus"
            assert trigger["metricType"] == "AverageValue"  # per pod
            assert f'service="{name}"' in trigger["metadata"]["query"]
            float(trigger["metadata"]["threshold"])


def test_keda_misspelt_field_is_caught_by_the_round_trip() -> None:
    doc = copy.deepcopy(scaled_objects()["classify"])
    doc["spec"]["triggers"][0]["metadata_"] = {}
    parsed = ScaledObject.model_validate(doc)
    assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") != doc


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ADAPTER_RULES.read_text())["rules"]


def test_adapter_rules_serve_every_custom_metric_the_hpas_read() -> None:
    (config_map,) = rendered("k8s/autoscaling/prometheus-adapter")
    assert yaml.safe_load(config_map["data"]["config.yaml"])["rules"] == adapter_rules()
    served = set()
    for rule in adapter_rules():
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert re.fullmatch(r"\^\w+\$", rule["name"]["matches"])
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        served.add(rule["name"]["as"])
    for overlay in ("k8s/overlays/dev", "k8s/overlays/prod"):
        for hpa in of_kind(overlay, "HorizontalPodAutoscaler").values():
            pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "pods" in m]
            assert pods and set(pods) <= served, (hpa["metadata"]["name"], pods)
