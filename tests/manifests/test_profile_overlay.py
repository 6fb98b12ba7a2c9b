"""manifests/overlays/kubeflow-profile (multi-user Kubeflow with Istio), KFP's pipeline root on the suite's
store, and Secret kfops-training-env.

The Istio objects are validated against Istio's CRDs (tests/schemas/istio/) with unknown fields rejected, and
checked against the rendered workloads they must select: who may reach MLflow and MinIO, in plaintext and over
mTLS. manifests/training-env-secret.sh runs with the real kubectl, its `get` answered from rendered objects.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from kfops.platform_manifests import load_secret_specs, pod_specs, render_overlay
from tests.crd_schemas import schema_errors
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
PROFILE = MANIFESTS / "overlays" / "kubeflow-profile"
PRODUCTION = MANIFESTS / "overlays" / "production"
SECRETS_FILE = MANIFESTS / "secrets.yaml"
SCRIPT = MANIFESTS / "training-env-secret.sh"
NS = "kfops"
MESH_LABEL = {"kfops.io/mesh-service": "true"}
ISTIO_KINDS = {"PeerAuthentication", "AuthorizationPolicy", "Sidecar"}


@pytest.fixture(autouse=True)
def _kubectl():
    require("kubectl")


@cache
def _render(overlay: Path) -> tuple[dict, ...]:
    return tuple(render_overlay(overlay))


@pytest.fixture
def objects() -> list[dict]:
    return copy.deepcopy(list(_render(PROFILE)))


def _one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _template(obj: dict) -> dict:
    return obj["spec"]["template"]


def _selected(objects: list[dict], labels: dict) -> set[str]:
    """Names of the workloads whose pods carry all of ``labels``."""
    return {
        o["metadata"]["name"]
        for o in objects
        if pod_specs(o) is not None
        and "template" in o.get("spec", {})
        and labels.items() <= (_template(o)["metadata"].get("labels") or {}).items()
    }


# ------------------------------------------------------------------------------------------------ Istio
def test_istio_objects_match_their_crds(objects):
    istio = [o for o in objects if o["kind"] in ISTIO_KINDS]
    assert sorted(o["kind"] for o in istio) == [
        "AuthorizationPolicy",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "Sidecar",
    ]
    for obj in istio:
        assert schema_errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize(
    ("kind", "mutate", "where"),
    [
        ("PeerAuthentication", lambda s: s["portLevelMtls"]["5000"].update(mode="LENIENT"), "portLevelMtls"),
        ("PeerAuthentication", lambda s: s.update(portLevelMTLS={}), "spec"),
        ("AuthorizationPolicy", lambda s: s.update(action="PERMIT"), "action"),
        ("AuthorizationPolicy", lambda s: s["rules"][0]["from"][0]["source"].update(namespace=["x"]), "source"),
        ("Sidecar", lambda s: s["outboundTrafficPolicy"].update(mode="ONLY_REGISTRY"), "outboundTrafficPolicy"),
    ],
)
def test_istio_validation_rejects_wrong_fields(objects, kind, mutate, where):
    broken = copy.deepcopy(next(o for o in objects if o["kind"] == kind))
    mutate(broken["spec"])
    errors = schema_errors(broken)
    assert any(where in e for e in errors), errors


def test_mesh_objects_select_mlflow_and_minio_only(objects):
    assert _selected(objects, MESH_LABEL) == {"mlflow", "minio"}
    for obj in objects:
        if obj["kind"] in ("PeerAuthentication", "AuthorizationPolicy"):
            assert obj["spec"]["selector"] == {"matchLabels": MESH_LABEL}, obj["metadata"]["name"]
    assert _one(objects, "Sidecar", "kfops-mesh-services")["spec"]["workloadSelector"] == {"labels": MESH_LABEL}
    # only the pod template got the label: a Deployment's selector is immutable
    for name in ("mlflow", "minio"):
        assert MESH_LABEL.items() - _one(objects, "Deployment", name)["spec"]["selector"]["matchLabels"].items()


def _service_ports(objects: list[dict]) -> set[str]:
    """The target ports of the Services in front of MLflow's and MinIO's S3 API, as Istio writes ports."""
    ports = set()
    for name, port_name in (("mlflow", "http"), ("minio", "s3")):
        service = _one(objects, "Service", name)
        port = next(p for p in service["spec"]["ports"] if p["name"] == port_name)
        container = pod_specs(_one(objects, "Deployment", name))["containers"][0]
        target = next(p["containerPort"] for p in container["ports"] if p["name"] == port["targetPort"])
        ports.add(str(target))
    return ports


def test_plaintext_is_accepted_on_the_service_ports_only(objects):
    peer = _one(objects, "PeerAuthentication", "kfops-mesh-services")["spec"]
    assert "mtls" not in peer  # every other port keeps the mesh's mode
    assert peer["portLevelMtls"] == {port: {"mode": "PERMISSIVE"} for port in _service_ports(objects)}
    assert set(peer["portLevelMtls"]) == {"5000", "9000"}


def test_who_may_call_mlflow_and_minio(objects):
    ports = sorted(_service_ports(objects))
    allow = _one(objects, "AuthorizationPolicy", "kfops-platform-allow")["spec"]
    assert allow["action"] == "ALLOW"
    assert allow["rules"] == [
        {"from": [{"source": {"namespaces": [NS]}}], "to": [{"operation": {"ports": ports}}]},
        {"from": [{"source": {"notPrincipals": ["*"]}}], "to": [{"operation": {"ports": ports}}]},
    ]
    deny = _one(objects, "AuthorizationPolicy", "kfops-platform-deny-other-namespaces")["spec"]
    assert deny == {
        "selector": {"matchLabels": MESH_LABEL},
        "action": "DENY",
        "rules": [{"from": [{"source": {"principals": ["*"], "notNamespaces": [NS]}}]}],
    }
    sidecar = _one(objects, "Sidecar", "kfops-mesh-services")["spec"]
    assert sidecar["egress"] == [{"hosts": ["./*", "istio-system/*"]}]
    assert sidecar["outboundTrafficPolicy"] == {"mode": "REGISTRY_ONLY"}


def test_sidecar_settings_of_the_platform_pods(objects):
    job = _template(_one(objects, "Job", "minio-bucket-init"))
    assert job["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    mlflow = _template(_one(objects, "Deployment", "mlflow"))
    config = json.loads(mlflow["metadata"]["annotations"]["proxy.istio.io/config"])
    assert config == {"holdApplicationUntilProxyStarts": True}


def test_the_suite_role_is_bound_to_the_profile_editor(objects):
    binding = _one(objects, "RoleBinding", "kfops-pipeline-runner-default-editor")
    role = _one(objects, "Role", binding["roleRef"]["name"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": NS}]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_overlay_is_production_plus_the_profile_parts(objects):
    production = {(o["kind"], o["metadata"]["name"]) for o in _render(PRODUCTION)}
    profile = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert production <= profile
    assert profile - production == {
        ("PeerAuthentication", "kfops-mesh-services"),
        ("AuthorizationPolicy", "kfops-platform-allow"),
        ("AuthorizationPolicy", "kfops-platform-deny-other-namespaces"),
        ("Sidecar", "kfops-mesh-services"),
        ("RoleBinding", "kfops-pipeline-runner-default-editor"),
        ("NetworkPolicy", "notebooks-ingress"),
        ("NetworkPolicy", "kfp-profile-servers-ingress"),
    }


def test_the_kubeflow_release_is_stated():
    comment = (PROFILE / "kustomization.yaml").read_text()
    readme = (MANIFESTS / "README.md").read_text()
    for text in (comment, readme):
        assert "Kubeflow 1.10" in text and "Istio 1.24" in text


# ------------------------------------------------------------------------------------------------ pipeline root
@pytest.mark.parametrize("overlay", [PRODUCTION, PROFILE], ids=lambda p: p.name)
def test_kfp_writes_artifacts_where_the_suite_reads_them(overlay):
    """KFP's launcher config sends every run's artifacts to the suite's MinIO, with credentials the suite's
    service accounts may read, into a bucket the init Job creates and the suite's MinIO user may use."""
    objects = list(_render(overlay))
    launcher = _one(objects, "ConfigMap", "kfp-launcher")["data"]
    platform = _one(objects, "ConfigMap", "kfops-platform")["data"]
    root = launcher["defaultPipelineRoot"]
    assert root.startswith("s3://")
    job_env = {
        e["name"]: e.get("value") for e in pod_specs(_one(objects, "Job", "minio-bucket-init"))["containers"][0]["env"]
    }
    assert root.removeprefix("s3://").split("/")[0] in job_env["KFOPS_BUCKETS"].split()
    s3 = yaml.safe_load(launcher["providers"])["s3"]["default"]
    assert s3["endpoint"] == platform["KFOPS_S3_ENDPOINT_URL"] == platform["MLFLOW_S3_ENDPOINT_URL"]
    assert s3["disableSSL"] is (platform["S3_USE_HTTPS"] == "0")
    assert s3["region"] == platform["AWS_DEFAULT_REGION"]
    secret_ref = s3["credentials"]["secretRef"]
    assert s3["credentials"]["fromEnv"] is False
    spec = load_secret_specs(SECRETS_FILE)[secret_ref["secretName"]]
    assert {secret_ref["accessKeyKey"], secret_ref["secretKeyKey"]} <= set(spec.keys)
    role = _one(objects, "Role", "kfops-pipeline-runner")
    readable = {n for r in role["rules"] if r["resources"] == ["secrets"] for n in r["resourceNames"]}
    assert secret_ref["secretName"] in readable
    configmaps = {n for r in role["rules"] if r["resources"] == ["configmaps"] for n in r["resourceNames"]}
    assert "kfp-launcher" in configmaps


# ------------------------------------------------------------------------------------------------ kfops-training-env
_FAKE_KUBECTL = """#!/bin/sh
# `kubectl -n NS get KIND NAME -o ...` answered from $FAKE_DIR/NS/KIND-NAME.yaml through the real kubectl's
# offline --local mode; everything else goes to the real kubectl (offline: --dry-run=client, --local).
if [ "$3" = get ]; then
    file="$FAKE_DIR/$2/$4-$5.yaml"
    [ -f "$file" ] || { echo "Error from server (NotFound): $4 \\"$5\\" not found" >&2; exit 1; }
    shift 5
    exec "$REAL_KUBECTL" annotate --local -f "$file" kfops.io/fake=1 "$@"
fi
exec "$REAL_KUBECTL" "$@"
"""


def _run_script(tmp_path: Path, namespace: str, objects: list[dict]) -> subprocess.CompletedProcess:
    kubectl = require("kubectl")
    folder = tmp_path / "cluster" / namespace
    folder.mkdir(parents=True)
    for obj in objects:
        (folder / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml").write_text(yaml.safe_dump(obj))
    fake = tmp_path / "kubectl"
    fake.write_text(_FAKE_KUBECTL)
    fake.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KUBECTL": str(fake),
        "REAL_KUBECTL": kubectl,
        "FAKE_DIR": str(tmp_path / "cluster"),
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),  # nothing may reach a cluster
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), namespace], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def _kfops_s3(namespace: str) -> dict:
    values = {"AWS_ACCESS_KEY_ID": "kfopsab12cd34ef56", "AWS_SECRET_ACCESS_KEY": "s3cr3t=with/odd+chars"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "kfops-s3", "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def test_training_env_secret_is_built_from_the_namespace(tmp_path):
    """The script turns the overlay's ConfigMap and the kfops-s3 Secret into kfops-training-env: every key the
    Katib trials and TrainJob nodes read, the endpoints of the namespace, the same MinIO user, no file left."""
    from kfops.components.train.trainjob import SECRET_KEYS

    config_map = _one(list(_render(PRODUCTION)), "ConfigMap", "kfops-platform")
    s3 = _kfops_s3(NS)
    result = _run_script(tmp_path, NS, [config_map, s3])
    assert result.returncode == 0, result.stderr
    secret = yaml.safe_load(result.stdout)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "kfops-training-env"
    assert secret["metadata"]["namespace"] == NS
    assert secret["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kfops"
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    expected = {**config_map["data"], **{k: base64.b64decode(v).decode() for k, v in s3["data"].items()}}
    assert values == expected
    # KFOPS_MLFLOW_ARTIFACT_ROOT is optional: MLflow's server-side default artifact root applies without it
    assert set(SECRET_KEYS) - set(values) == {"KFOPS_MLFLOW_ARTIFACT_ROOT"}
    listed = load_secret_specs(SECRETS_FILE)["kfops-training-env"]
    assert set(listed.keys) == set(values)
    assert "training-env-secret.sh" in listed.provided_by
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster", "kubectl"]  # the temporary file is gone


def test_training_env_secret_needs_the_platform_in_place(tmp_path):
    config_map = _one(list(_render(PRODUCTION)), "ConfigMap", "kfops-platform")
    result = _run_script(tmp_path, NS, [config_map])  # no kfops-s3 yet
    assert result.returncode != 0
    assert 'secret "kfops-s3" not found' in result.stderr
    assert "kfops-training-env" not in result.stdout
