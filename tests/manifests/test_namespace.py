"""The platform's namespace is written once, in a kustomization's ``namespace:``.

manifests/transformers/namespace rewrites every address and policy that names the namespace from the namespace
of the ``mlflow`` Service. Each test renders the base and every overlay into another namespace through a scratch
kustomization (``namespace: team-a`` over it, the transformer listed again, as manifests/README.md tells users
to) and checks that no ``kfops`` is left where a namespace goes, and that the addresses name the new one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from kfops.platform_manifests import endpoint_problems, pod_specs, render_overlay
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
TRANSFORMER = MANIFESTS / "transformers" / "namespace"
OVERLAYS = sorted(p.parent for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
TARGETS = [MANIFESTS / "base", *OVERLAYS]
DEFAULT = "kfops"
OTHER = "team-a"
# "<service>.kfops" in a host name (mlflow.kfops, minio.kfops.svc.cluster.local:9000), never "kfops.io/..." labels
# or the s3://kfops bucket.
_HOST_IN_DEFAULT = re.compile(rf"(?<![\w.-])[a-z0-9-]+\.{DEFAULT}(?=[.:/,\s]|$)")
_NAMESPACE_FIELDS = {"namespace", "namespaces", "notNamespaces"}


@pytest.fixture(autouse=True)
def _kubectl():
    require("kubectl")


def _scratch(tmp_path: Path, target: Path, namespace: str = OTHER, transformer: bool = True) -> list[dict]:
    folder = tmp_path / "scratch"
    folder.mkdir()
    doc: dict = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": [os.path.relpath(target, folder)],
    }
    if transformer:
        doc["transformers"] = [os.path.relpath(TRANSFORMER, folder)]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return render_overlay(folder)


def _strings(node, path: str = "") -> list[tuple[str, str, str]]:
    """(path, key, value) of every string in the object; key is the nearest mapping key."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                found.append((f"{path}.{key}", key, value))
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                found += [(f"{path}.{key}[{i}]", key, v) for i, v in enumerate(value)]
            else:
                found += _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _strings(value, f"{path}[{index}]")
    return found


def default_namespace_left(objects: list[dict]) -> list[str]:
    """Every place the objects still name the default namespace: namespace fields, and host names in any
    string (ConfigMap data, arguments, the launcher's providers, annotations)."""
    left = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        for path, key, value in _strings(obj):
            if (key in _NAMESPACE_FIELDS and value == DEFAULT) or _HOST_IN_DEFAULT.search(value):
                left.append(f"{where}{path}: {value}")
    return left


def _one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: p.name)
def test_nothing_names_the_default_namespace_after_a_move(tmp_path, target):
    objects = _scratch(tmp_path, target)
    assert default_namespace_left(objects) == []
    assert {o["metadata"].get("namespace") for o in objects} == {OTHER}
    assert endpoint_problems(objects) == []  # what `kfops platform check` says about the addresses


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: p.name)
def test_addresses_name_the_new_namespace(tmp_path, target):
    objects = _scratch(tmp_path, target)
    data = _one(objects, "ConfigMap", "kfops-platform")["data"]
    assert data["MLFLOW_TRACKING_URI"] == f"http://mlflow.{OTHER}.svc.cluster.local:5000"
    for key in ("MLFLOW_S3_ENDPOINT_URL", "KFOPS_S3_ENDPOINT_URL"):
        assert data[key] == f"http://minio.{OTHER}.svc.cluster.local:9000", key
    assert data["S3_ENDPOINT"] == f"minio.{OTHER}.svc.cluster.local:9000"
    args = pod_specs(_one(objects, "Deployment", "mlflow"))["containers"][0]["args"]
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert hosts == [
        "mlflow:*",
        f"mlflow.{OTHER}:*",
        f"mlflow.{OTHER}.svc:*",
        f"mlflow.{OTHER}.svc.cluster.local:*",
        "localhost:*",
        "127.0.0.1:*",
    ]


def test_mlflow_answers_the_names_of_its_new_namespace(tmp_path):
    """MLflow's own Host check with the moved --allowed-hosts: the new namespace's names pass, the old fail."""
    from mlflow.server.security_utils import is_allowed_host_header

    objects = _scratch(tmp_path, MANIFESTS / "overlays" / "local")
    args = pod_specs(_one(objects, "Deployment", "mlflow"))["containers"][0]["args"]
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    for name in (f"mlflow.{OTHER}", f"mlflow.{OTHER}.svc", f"mlflow.{OTHER}.svc.cluster.local"):
        assert is_allowed_host_header(hosts, f"{name}:5000"), name
    assert not is_allowed_host_header(hosts, f"mlflow.{DEFAULT}.svc.cluster.local:5000")


def test_profile_objects_follow_the_namespace(tmp_path):
    objects = _scratch(tmp_path, MANIFESTS / "overlays" / "kubeflow-profile")
    launcher = yaml.safe_load(_one(objects, "ConfigMap", "kfp-launcher")["data"]["providers"])
    assert launcher["s3"]["default"]["endpoint"] == f"http://minio.{OTHER}.svc.cluster.local:9000"
    binding = _one(objects, "RoleBinding", "kfops-pipeline-runner-default-editor")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": OTHER}]
    allow = _one(objects, "AuthorizationPolicy", "kfops-platform-allow")
    assert allow["spec"]["rules"][0]["from"] == [{"source": {"namespaces": [OTHER]}}]
    deny = _one(objects, "AuthorizationPolicy", "kfops-platform-deny-other-namespaces")
    assert deny["spec"]["rules"][0]["from"] == [{"source": {"principals": ["*"], "notNamespaces": [OTHER]}}]


def test_a_move_without_the_transformer_is_caught(tmp_path):
    """Without the transformer the addresses keep the old namespace: the scan above and `kfops platform check`
    both see it (so the scan can fail)."""
    objects = _scratch(tmp_path, MANIFESTS / "overlays" / "kubeflow-profile", transformer=False)
    left = default_namespace_left(objects)
    assert any("ConfigMap/kfops-platform.data.MLFLOW_TRACKING_URI" in p for p in left), left
    assert any("Deployment/mlflow" in p and "--allowed-hosts" in p for p in left), left
    assert any("ConfigMap/kfp-launcher.data.providers" in p for p in left), left
    assert any("AuthorizationPolicy/kfops-platform-allow" in p for p in left), left
    problems = endpoint_problems(objects)
    assert any("MLFLOW_TRACKING_URI" in p for p in problems) and any("--allowed-hosts" in p for p in problems)


def test_the_committed_overlays_name_their_namespace_once():
    """`namespace:` is the only place an overlay writes it; everything else is the transformer's."""
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert kustomization["namespace"] == DEFAULT, overlay.name
        transformers = [(overlay / t).resolve() for t in kustomization.get("transformers", [])]
        assert TRANSFORMER.resolve() in transformers, f"{overlay.name}: lists no {TRANSFORMER.relative_to(REPO_ROOT)}"
        text = "\n".join(p.read_text() for p in overlay.glob("*.yaml") if p.name != "kustomization.yaml")
        assert not _HOST_IN_DEFAULT.search(text), overlay.name
