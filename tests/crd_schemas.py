"""Kubernetes custom-resource manifests checked against the real CRD schemas committed in tests/schemas/ (copies
of the upstream CRDs with their prose stripped, written by ``make schemas-refresh``; tests/schemas/README.md names
each upstream): KServe, Kubeflow Trainer, Prometheus Operator, Kubeflow Tensorboard, Istio.

A CRD's OpenAPI v3 schema is turned into a JSON Schema (Draft 7) that rejects unknown fields, as the API server
does under strict field validation (the kubectl default), so a typo fails here instead of being silently pruned
in the cluster. ``schema_errors(obj)`` lists every violation of one object (empty when it is valid).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft7Validator

SCHEMAS_ROOT = Path(__file__).resolve().parent / "schemas"

# metadata is only `type: object` in a CRD schema (the API server checks it itself): check the parts the
# manifests use. Names: DNS-1035 labels (KServe's rule for InferenceService names, stricter than Kubernetes').
_DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _DNS1035, "maxLength": 63},
        "namespace": {"type": "string", "pattern": _DNS1035, "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


# ---------------------------------------------------------------------------------------------- schemas


def _to_json_schema(node):
    """A CRD structural schema as JSON Schema: x-kubernetes-* extensions dropped (int-or-string kept as its
    anyOf, embedded resources allowed their apiVersion/kind/metadata), `nullable` as a null type, and unknown
    fields rejected on every object that lists its properties, unless it preserves unknown fields."""
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _to_json_schema(value)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@cache
def _crds() -> dict[tuple[str, str], dict]:
    """(group, kind) -> CRD, for every committed CRD copy under SCHEMAS_ROOT."""
    crds = {}
    for path in sorted(SCHEMAS_ROOT.glob("*/*.json")):
        crd = json.loads(path.read_text())
        if crd.get("kind") == "CustomResourceDefinition":
            crds[(crd["spec"]["group"], crd["spec"]["names"]["kind"])] = crd
    assert crds, f"no CRD files under {SCHEMAS_ROOT}"
    return crds


@cache
def validator(api_version: str, kind: str) -> Draft7Validator:
    group, _, version = api_version.rpartition("/")
    crd = _crds().get((group, kind))
    assert crd is not None, f"no CRD for kind {kind} in group {group!r} under {SCHEMAS_ROOT}"
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{kind}: version {version!r} not in the CRD (has {sorted(versions)})"
    assert versions[version].get("served", True), f"{kind} {version} is not served"
    schema = _to_json_schema(versions[version]["schema"]["openAPIV3Schema"])
    properties = schema["properties"]
    properties.pop("status", None)  # written by the controller, never part of a manifest
    properties |= {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": OBJECT_META}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return Draft7Validator(schema)


def schema_errors(obj: dict) -> list[str]:
    """Every schema violation of one object, as 'path: message' strings (empty when valid)."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    checker = validator(api_version, kind)
    return sorted(
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in checker.iter_errors(obj)
    )
