"""python -m scripts.kserve_schema WHEEL: write k8s/kserve/schema/ from the kserve SDK's wheel.

KServe publishes its API as the OpenAPI-generated models of its Python SDK (`kserve/models/`:
each class lists its fields' JSON names, types and required fields). The SDK itself cannot be
installed beside our pins (it needs pandas<3 and psutil<6), so this reads those models from the
wheel without importing them (`pip download --no-deps kserve==0.21.0`) and writes them as one
JSON schema, every object closed (`additionalProperties: false`), whose Kubernetes types
(V1Container, V1ObjectMeta, ...) point at kubernetes-validate's definitions. The schema is
committed; tests/unit/test_kserve.py validates k8s/kserve against it with jsonschema.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "k8s" / "kserve" / "schema"
#: the Kubernetes schemas the SDK's embedded types are checked against (the newest shipped)
KUBERNETES_VERSION = "1.37.0"
#: where the Kubernetes types point: kubernetes-validate's definitions (the test resolves it)
KUBERNETES_REF = f"kubernetes-{KUBERNETES_VERSION}.json"
SCALARS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
OPEN: set[str] = set()
REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def kubernetes_definitions() -> dict[str, Any]:
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = base / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())["$defs"]


def kubernetes_ref(name: str, definitions: dict[str, Any]) -> str:
    """`V1EnvVar` -> the definition io.k8s.api.core.v1.EnvVar (core first, then meta, ...)."""
    if name.startswith("K8sIo"):  # K8sIoApiAutoscalingV2X -> io.k8s.api.autoscaling.v2.X
        flat = name[len("K8sIo") :].lower()
        for definition in definitions:
            if definition.startswith("io.k8s.") and definition[7:].replace(".", "").lower() == flat:
                return f"{KUBERNETES_REF}#/$defs/{definition}"
    match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)(\w+)", name)
    if not match:
        raise LookupError(f"not a Kubernetes model name: {name}")
    version, kind = match.group(1).lower(), match.group(2)
    found = sorted(d for d in definitions if d.endswith(f".{version}.{kind}"))
    if not found:
        raise LookupError(f"{name}: no {version}.{kind} in Kubernetes {KUBERNETES_VERSION}")
    preferred = [d for d in found if d.startswith("io.k8s.api.core.")] or found
    return f"{KUBERNETES_REF}#/$defs/{preferred[0]}"


def type_schema(spec: str, own: set[str], definitions: dict[str, Any]) -> dict[str, Any]:
    if spec in SCALARS:
        return {"type": SCALARS[spec]}
    if spec == "object":
        return {}
    if spec == "datetime":
        return {"type": "string"}
    if spec.startswith("list[") and spec.endswith("]"):
        return {"type": "array", "items": type_schema(spec[5:-1], own, definitions)}
    if spec.startswith("dict(str, ") and spec.endswith(")"):
        values = type_schema(spec[len("dict(str, ") : -1], own, definitions)
        return {"type": "object", "additionalProperties": values}
    if spec in own:
        return {"$ref": f"#/definitions/{spec}"}
    if spec == "ResourceQuantity":
        return {"type": ["string", "integer", "number"]}
    if spec.startswith(("Knative", "GithubCom")) or re.fullmatch(r"V\d+(alpha|beta)\d+\w+", spec):
        # Knative's status types, KEDA's triggers, and KServe types the SDK names but does not
        # ship (the LLM services'): accepted unchecked, and listed in the schema's "open"
        OPEN.add(spec)
        return {}
    return {"$ref": kubernetes_ref(spec, definitions)}


def literal(tree: ast.Module, field: str) -> dict[str, str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == field for t in node.targets
        ):
            return dict(ast.literal_eval(node.value))
    return {}


def models(wheel: Path) -> dict[str, tuple[dict[str, str], dict[str, str], list[str]]]:
    """class name -> (python field -> type, python field -> JSON name, required fields)."""
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if not re.fullmatch(r"kserve/models/v\w+\.py", name):
                continue
            source = archive.read(name).decode()
            tree = ast.parse(source)
            classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
            types, keys = literal(tree, "openapi_types"), literal(tree, "attribute_map")
            if classes and keys:
                found[classes[0]] = (types, keys, sorted(set(REQUIRED.findall(source))))
    return found


def schema(wheel: Path) -> dict[str, Any]:
    definitions = kubernetes_definitions()
    found = models(wheel)
    own = set(found)
    out: dict[str, Any] = {}
    for cls, (types, keys, required) in found.items():
        out[cls] = {
            "type": "object",
            "properties": {keys[f]: type_schema(types[f], own, definitions) for f in sorted(types)},
            "required": [keys[f] for f in required],
            "additionalProperties": False,
        }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": out,
        "open": sorted(OPEN),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    wheel = Path(argv[0])
    version = re.search(r"kserve-([\d.]+)-", wheel.name)
    if not version:
        print(f"{wheel.name}: expected kserve-<version>-...whl")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    built = schema(wheel)
    built["$comment"] = f"generated by `python -m scripts.kserve_schema {wheel.name}`; do not edit"
    target = OUT / f"kserve-{version.group(1)}.json"
    target.write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target.relative_to(ROOT)}: {len(built['definitions'])} KServe types")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
