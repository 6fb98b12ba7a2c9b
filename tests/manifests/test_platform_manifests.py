"""The platform manifests (manifests/base, manifests/overlays) and ``kfops platform check``.

Every overlay is rendered with ``kubectl kustomize`` (kustomize v5 inside kubectl; no cluster). Core objects are
validated against the Kubernetes OpenAPI schemas bundled by kubernetes-validate (strict: unknown fields fail),
custom resources against the CRDs in tests/schemas (tests/crd_schemas.py), Kubeflow's PodDefault against its
Go types' fields built from the same core definitions. Then the suite's rules: every container non-root with a
read-only root filesystem, no capabilities and bounded resources; every Secret reference resolvable; no
credential anywhere; least-privilege RBAC; NetworkPolicies admitting exactly the traffic the suite needs; and
checkov (its own virtualenv: `make checkov-venv`) with no finding that is not skipped in place with a reason.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from kfops.cli import main
from kfops.platform_manifests import (
    check_secret_references,
    endpoint_problems,
    load_secret_specs,
    pod_specs,
    refuse_terminal,
    render_overlay,
    secret_manifests,
    secret_references,
    security_problems,
)
from tests.crd_schemas import schema_errors
from tests.manifests.test_serving_manifests import _SECRET_PATTERNS, _SENSITIVE_ENV
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
BASE = MANIFESTS / "base"
OVERLAYS = sorted(p.parent for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
SECRETS_FILE = MANIFESTS / "secrets.yaml"
NAMESPACE = "kfops"
# The oldest Kubernetes the manifests target (Kubeflow 1.10 / KServe 0.15+ era) and a current one.
K8S_VERSIONS = ("1.30", "1.33")
CHECKOV_ENV = {"BC_SKIP_MAPPING": "TRUE"}  # no mapping download (offline)


@pytest.fixture(autouse=True)
def _kubectl():
    """Rendering overlays needs kubectl with kustomize v5."""
    require("kubectl")


@cache
def _render(overlay: Path) -> tuple[dict, ...]:
    return tuple(render_overlay(overlay))


@pytest.fixture(params=OVERLAYS, ids=lambda p: p.name)
def overlay(request) -> Path:
    return request.param


@pytest.fixture
def objects(overlay) -> list[dict]:
    return copy.deepcopy(list(_render(overlay)))


def _one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _tmp_overlay(tmp_path: Path, kustomization: dict, base: Path = OVERLAYS[0]) -> Path:
    """An overlay in tmp_path on top of ``base`` (a relative path: kustomize resolves resources from the overlay)."""
    folder = tmp_path / "overlay"
    folder.mkdir()
    doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    doc |= {"resources": [os.path.relpath(base, folder)]} | kustomization
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return folder


def test_overlays_exist():
    assert {p.name for p in OVERLAYS} == {"kubeflow-profile", "local", "production"}


# ------------------------------------------------------------------------------------------------ schemas
@cache
def _k8s_definitions(version: str) -> dict:
    import importlib.resources

    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return json.loads((root / f"v{version}.0-local-strict" / "_definitions.json").read_text())


def _poddefault_errors(obj: dict, version: str = K8S_VERSIONS[0]) -> list[str]:
    """Kubeflow's PodDefault (admission-webhook's PodDefaultSpec: no CRD schema is published) with its fields'
    core types (EnvVar, Volume, ...) from the Kubernetes definitions; unknown fields rejected."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    core = "/api/_definitions.json#/$defs/io.k8s."

    def ref(name: str) -> dict:
        return {"$ref": core + name}

    def items(name: str) -> dict:
        return {"type": "array", "items": ref(name)}

    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    schema = {
        "$id": "https://kubernetes.io/api/poddefault.json",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "kubeflow.org/v1alpha1"},
            "kind": {"const": "PodDefault"},
            "metadata": ref("apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": {
                "type": "object",
                "required": ["selector"],
                "additionalProperties": False,
                "properties": {
                    "selector": ref("apimachinery.pkg.apis.meta.v1.LabelSelector"),
                    "desc": {"type": "string"},
                    "serviceAccountName": {"type": "string"},
                    "automountServiceAccountToken": {"type": "boolean"},
                    "env": items("api.core.v1.EnvVar"),
                    "envFrom": items("api.core.v1.EnvFromSource"),
                    "volumes": items("api.core.v1.Volume"),
                    "volumeMounts": items("api.core.v1.VolumeMount"),
                    "annotations": strings,
                    "labels": strings,
                    "tolerations": items("api.core.v1.Toleration"),
                },
            },
        },
    }
    registry = Resource.from_contents(_k8s_definitions(version)) @ Registry()
    validator = Draft202012Validator(schema, registry=registry)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj))


def _core_errors(obj: dict, version: str) -> list[str] | None:
    """Errors against the Kubernetes OpenAPI schema, or None when the kind is not a core Kubernetes kind."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(map(str, err.path))}: {err.message}"]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_matches_its_schema(objects, version):
    seen = set()
    for obj in objects:
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        errors = _core_errors(obj, version)
        if errors is None:  # a custom resource
            errors = _poddefault_errors(obj, version) if obj["kind"] == "PodDefault" else schema_errors(obj)
        assert errors == [], what
        seen.add(obj["kind"])
    assert {"Deployment", "StatefulSet", "Job", "Service", "NetworkPolicy", "Role", "ServingRuntime"} <= seen


@pytest.mark.parametrize(
    ("kind", "mutate", "where"),
    [
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(imagee="x"), "containers"),
        ("Deployment", lambda o: o["spec"].update(replicas="2"), "spec.replicas"),
        ("NetworkPolicy", lambda o: o["spec"].update(podSelectr={}), "spec"),
        ("StatefulSet", lambda o: o["spec"]["volumeClaimTemplates"][0]["spec"].update(accessMode="RWO"), "spec"),
        ("PodDefault", lambda o: o["spec"].update(selectorr={}), "spec"),
        ("PodDefault", lambda o: o["spec"]["env"][0].update(valueFrom={"secretKeyRef": {"key": 1}}), "env"),
        ("Tensorboard", lambda o: o["spec"].update(logsPath="s3://kfops"), "spec"),
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(interval=60), "interval"),
    ],
)
def test_validation_rejects_wrong_fields(kind, mutate, where):
    objects = [o for o in _render(OVERLAYS[-1]) if o["kind"] == kind]
    broken = copy.deepcopy(objects[0])
    mutate(broken)
    errors = _core_errors(broken, K8S_VERSIONS[0])
    if errors is None:
        errors = _poddefault_errors(broken) if kind == "PodDefault" else schema_errors(broken)
    assert errors, f"the broken {kind} passed validation"
    assert any(where in error for error in errors), errors


def test_overlay_deploys_into_one_namespace(objects):
    for obj in objects:
        assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
    binding = _one(objects, "RoleBinding", "kfops-pipeline-runner")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kfops-pipeline-runner", "namespace": NAMESPACE}]


def test_every_base_resource_reaches_an_overlay():
    """Nothing under manifests/base (or the serving and monitoring bases) is left out of every overlay."""
    in_overlays = {(o["kind"], o["metadata"]["name"]) for overlay in OVERLAYS for o in _render(overlay)}
    bases = [p.parent for p in BASE.rglob("kustomization.yaml")] + [MANIFESTS / "serving", MANIFESTS / "monitoring"]
    for base in bases:
        for obj in render_overlay(base):
            assert (obj["kind"], obj["metadata"]["name"]) in in_overlays, (
                f"{base.relative_to(REPO_ROOT)}: {obj['kind']}"
            )


def test_local_overlay_needs_only_kserve_crds():
    """kind with KServe (the end-to-end workflow) has no Prometheus Operator or Kubeflow CRDs."""
    groups = {o["apiVersion"].rpartition("/")[0] for o in _render(MANIFESTS / "overlays" / "local")}
    assert groups <= {"", "apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io", "serving.kserve.io"}


# ------------------------------------------------------------------------------------------------ security
def test_containers_meet_the_security_baseline(objects):
    containers = [c for o in objects if (spec := pod_specs(o)) for c in spec["containers"]]
    assert len(containers) >= 4
    assert security_problems(objects) == []


def test_pods_that_do_not_call_the_api_mount_no_token(objects):
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            assert pod_specs(obj).get("automountServiceAccountToken") is False, obj["metadata"]["name"]


def test_security_check_names_every_gap():
    minio = copy.deepcopy(_one(list(_render(OVERLAYS[0])), "Deployment", "minio"))
    spec = minio["spec"]["template"]["spec"]
    spec["securityContext"].pop("runAsNonRoot")
    container = spec["containers"][0]
    container["securityContext"] = {"readOnlyRootFilesystem": False, "capabilities": {"add": ["NET_ADMIN"]}}
    container["resources"].pop("limits")
    container["image"] = "quay.io/minio/minio:latest"
    spec["hostNetwork"] = True
    problems = security_problems([minio])
    expected = [
        "hostNetwork is true",
        "container minio: runAsNonRoot is not true",
        "readOnlyRootFilesystem is not true",
        "allowPrivilegeEscalation is not false",
        "capabilities.drop does not include ALL",
        "adds capabilities ['NET_ADMIN']",
        "no cpu limit",
        "no memory limit",
        "is not pinned to a version tag or digest",
    ]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert all(p.startswith("Deployment kfops/minio") for p in problems)


def _checkov() -> str:
    return require("checkov")


def test_checkov_finds_nothing_unexplained(tmp_path):
    """checkov's Kubernetes checks over every rendered overlay: no failed check, and each skipped check is
    annotated on its object (checkov.io/skipN: CKV_ID=reason) with a reason. A copy of one overlay with a
    container's read-only root filesystem turned off shows the scan really looks."""
    checkov = _checkov()
    scanned = tmp_path / "rendered"
    scanned.mkdir()
    for overlay in OVERLAYS:
        (scanned / f"{overlay.name}.yaml").write_text(yaml.safe_dump_all(list(_render(overlay)), sort_keys=False))
    broken = [copy.deepcopy(o) for o in _render(OVERLAYS[0])]
    mlflow = _one(broken, "Deployment", "mlflow")
    mlflow["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    (scanned / "broken.yaml").write_text(yaml.safe_dump_all(broken, sort_keys=False))
    result = subprocess.run(
        [checkov, "-d", str(scanned), "--framework", "kubernetes", "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **CHECKOV_ENV},
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    results = report["results"]
    failed = [(f["file_path"], f["check_id"], f["check_name"], f["resource"]) for f in results["failed_checks"]]
    real = [f for f in failed if not f[0].endswith("broken.yaml")]
    assert real == [], "checkov findings (fix them, or skip in place with a reason):\n" + "\n".join(map(str, real))
    assert ("/broken.yaml", "CKV_K8S_22", "Use read-only filesystem for containers where possible") in {
        f[:3] for f in failed
    }
    assert results["parsing_errors"] == []
    assert report["summary"]["passed"] > 500
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 6, f"{skipped['check_id']} on {skipped['resource']}: no reason given"


# ------------------------------------------------------------------------------------------------ secrets
def test_secret_references_resolve(objects):
    specs = load_secret_specs(SECRETS_FILE)
    refs = secret_references(objects)
    assert {r.secret for r in refs} >= {"kfops-s3", "kfops-minio-root", "kfops-mlflow-db"}
    assert check_secret_references(objects, specs, SECRETS_FILE) == []
    assert not [o for o in objects if o["kind"] == "Secret"], (
        "no Secret is committed: manifests/secrets.yaml lists them"
    )


def _env_secret_defaults() -> set[str]:
    """The Secrets the compiled pipelines hand to the pods they create at run time (Katib trials, TrainJob
    nodes): the default of every `env_secret` parameter."""
    from kfops.pipelines.submit_inputs import suite_pipelines

    names = set()
    for path in suite_pipelines().values():
        spec = next(d for d in yaml.safe_load_all(path.read_text()) if d)
        parameters = (spec.get("root", {}).get("inputDefinitions") or {}).get("parameters") or {}
        if "env_secret" in parameters:
            names.add(parameters["env_secret"]["defaultValue"])
    return names


def test_every_listed_secret_is_used():
    specs = load_secret_specs(SECRETS_FILE)
    used = {r.secret for overlay in OVERLAYS for r in secret_references(list(_render(overlay)))}
    role = _one(list(_render(OVERLAYS[0])), "Role", "kfops-pipeline-runner")
    used |= {n for rule in role["rules"] if rule["resources"] == ["secrets"] for n in rule["resourceNames"]}
    pods_env = _env_secret_defaults()
    assert pods_env == {"kfops-training-env"}
    assert set(specs) == used | pods_env


def test_overlay_with_a_missing_secret_fails_the_check(tmp_path, capsys):
    """An overlay whose MLflow Deployment names a Secret nobody creates: `kfops platform check` lists the exact
    reference and exits 2, before anything is applied."""
    overlay = _tmp_overlay(
        tmp_path,
        {
            "patches": [
                {
                    "target": {"kind": "Deployment", "name": "mlflow"},
                    "patch": yaml.safe_dump(
                        [
                            {
                                "op": "replace",
                                "path": "/spec/template/spec/containers/0/env/1/valueFrom/secretKeyRef/name",
                                "value": "kfops-mlflow-database",
                            },
                            {
                                "op": "replace",
                                "path": "/spec/template/spec/containers/0/env/2/valueFrom/secretKeyRef/key",
                                "value": "AWS_ACCESS_KEY",
                            },
                        ]
                    ),
                }
            ]
        },
    )
    code = main(["platform", "check", str(overlay), "--secrets-file", str(SECRETS_FILE)])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "Deployment kfops/mlflow: spec.template.spec.containers[mlflow].env[PGPASSWORD].valueFrom: Secret "
        f"'kfops-mlflow-database' is not created by the overlay and not listed in {SECRETS_FILE}"
    ) in err
    assert "Secret 'kfops-s3' has no key 'AWS_ACCESS_KEY'" in err and "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in err


def test_platform_check_passes_the_committed_overlays(capsys):
    code = main(["platform", "check", *map(str, OVERLAYS)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("Secret references, security settings and endpoints OK") == len(OVERLAYS)


def test_endpoints_follow_the_namespace(objects, tmp_path):
    assert endpoint_problems(objects) == []
    moved = render_overlay(_tmp_overlay(tmp_path, {"namespace": "ml-prod"}))
    problems = endpoint_problems(moved)
    assert any("ConfigMap ml-prod/kfops-platform: MLFLOW_TRACKING_URI=" in p for p in problems), problems
    assert any("--allowed-hosts" in p and "mlflow.ml-prod.svc" in p for p in problems), problems


def test_generated_secrets_satisfy_every_reference():
    specs = load_secret_specs(SECRETS_FILE)
    text = secret_manifests(specs, NAMESPACE, {"AWS_ACCESS_KEY_ID": "kfopsapp"}, generate=True)
    generated = list(yaml.safe_load_all(text))
    assert [s["metadata"]["name"] for s in generated] == ["kfops-minio-root", "kfops-s3", "kfops-mlflow-db"]
    s3 = generated[1]
    assert s3["stringData"]["AWS_ACCESS_KEY_ID"] == "kfopsapp"  # from the environment
    assert len(s3["stringData"]["AWS_SECRET_ACCESS_KEY"]) >= 30  # random
    assert s3["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "minio.kfops.svc.cluster.local:9000"
    for overlay in OVERLAYS:
        assert check_secret_references(list(_render(overlay)) + generated, {}) == []
    again = list(yaml.safe_load_all(secret_manifests(specs, NAMESPACE, {}, generate=True)))
    assert again[0]["stringData"] != generated[0]["stringData"]


def test_secrets_without_values_or_to_a_terminal_are_refused():
    specs = load_secret_specs(SECRETS_FILE)
    from kfops.components.contracts import KfopsError

    with pytest.raises(KfopsError) as err:
        secret_manifests(specs, NAMESPACE, {"AWS_ACCESS_KEY_ID": "x"})
    for name in ("KFOPS_MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "KFOPS_MLFLOW_DB_PASSWORD"):
        assert name in str(err.value)
    assert "AWS_ACCESS_KEY_ID (" not in str(err.value)

    class Terminal:
        def isatty(self) -> bool:
            return True

    with pytest.raises(KfopsError, match="pipe it into `kubectl apply -f -`"):
        refuse_terminal(Terminal())


def test_no_credentials_in_rendered_overlays(objects):
    text = yaml.safe_dump_all(objects)
    for what, pattern in _SECRET_PATTERNS.items():
        assert not pattern.search(text), what
    for obj in objects:
        spec = pod_specs(obj) or {}
        secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            secret_mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in secret_volumes]
            for env in container.get("env", []):
                if not _SENSITIVE_ENV.search(env["name"]):
                    continue
                where = f"{obj['metadata']['name']}: {env['name']}"
                if env["name"].endswith("_FILE"):  # a path to a mounted Secret's file, not the credential
                    assert any(env["value"].startswith(m.rstrip("/") + "/") for m in secret_mounts), where
                else:
                    assert "value" not in env, f"{where} must come from a Secret"


# ------------------------------------------------------------------------------------------------ RBAC
def test_pipeline_runner_role_is_least_privilege(objects):
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = _one(objects, "Role", "kfops-pipeline-runner")
    grants = {}
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        if {"secrets", "configmaps"} & set(rule["resources"]):
            assert rule.get("resourceNames") and rule["verbs"] == ["get"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants[(group, resource)] = set(rule["verbs"])
    assert grants[("serving.kserve.io", "inferenceservices")] >= {"get", "create", "patch", "watch"}
    assert "delete" not in grants[("serving.kserve.io", "inferenceservices")]
    assert grants[("kubeflow.org", "experiments")] >= {"get", "create", "watch", "delete"}
    assert grants[("trainer.kubeflow.org", "trainjobs")] >= {"get", "create", "watch", "delete"}
    assert grants[("", "pods")] == {"get", "list", "watch"}
    reader = _one(objects, "ServiceAccount", "kfops-model-reader")
    assert reader["automountServiceAccountToken"] is False
    assert reader["secrets"] == [{"name": "kfops-s3"}]


# ------------------------------------------------------------------------------------------------ network
def _selects(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present = expr["key"] in labels
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_network_policies_deny_by_default_and_admit_each_workload(objects):
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = _one(objects, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        ports = {p["containerPort"] for c in pod_specs(obj)["containers"] for p in c.get("ports", [])}
        admitting = [p for p in policies if p is not deny and _selects(p["spec"]["podSelector"], labels)]
        assert admitting, f"{obj['metadata']['name']}: no NetworkPolicy admits traffic to it"
        admitted = {port["port"] for p in admitting for rule in p["spec"]["ingress"] for port in rule.get("ports", [])}
        assert admitted <= ports and admitted, obj["metadata"]["name"]
    postgres = _one(objects, "NetworkPolicy", "mlflow-postgres-ingress")
    assert postgres["spec"]["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
            "ports": [{"port": 5432, "protocol": "TCP"}],
        }
    ]
    predictors = _one(objects, "NetworkPolicy", "predictors-ingress")
    assert _selects(predictors["spec"]["podSelector"], {"serving.kserve.io/inferenceservice": "fraud-detector"})


# ------------------------------------------------------------------------------------------------ contracts
def _bucket(uri: str) -> str:
    return re.match(r"s3://([^/]+)", uri).group(1)


def test_buckets_agree_everywhere(objects):
    """The init Job creates the buckets the policy grants, MLflow writes to, the pipelines default to, and the
    TensorBoard reads."""
    from kfops.pipelines.parameters import DEFAULT_ARTIFACT_STORE

    job = _one(objects, "Job", "minio-bucket-init")
    env = {e["name"]: e.get("value") for e in pod_specs(job)["containers"][0]["env"]}
    created = set(env["KFOPS_BUCKETS"].split())
    policy = json.loads((BASE / "minio" / "kfops-readwrite.json").read_text())
    granted = {r.split(":::")[1].split("/")[0] for s in policy["Statement"] for r in s["Resource"]}
    assert created == granted == {"mlflow", "kfops"}
    args = pod_specs(_one(objects, "Deployment", "mlflow"))["containers"][0]["args"]
    assert _bucket(next(a for a in args if a.startswith("--default-artifact-root=")).split("=", 1)[1]) in created
    assert _bucket(DEFAULT_ARTIFACT_STORE) in created
    for board in (o for o in objects if o["kind"] == "Tensorboard"):
        assert _bucket(board["spec"]["logspath"]) in created


def test_mlflow_server_hands_out_s3_locations_and_keeps_credentials_out_of_its_uri(objects):
    container = pod_specs(_one(objects, "Deployment", "mlflow"))["containers"][0]
    args = container["args"]
    assert "--no-serve-artifacts" in args  # model URIs are s3:// locations KServe can download
    assert "--default-artifact-root=s3://mlflow" in args
    backend = next(a for a in args if a.startswith("--backend-store-uri=")).split("=", 1)[1]
    assert backend == "postgresql+psycopg2://mlflow-postgres:5432/mlflow"  # user and password: PGUSER/PGPASSWORD
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow.kfops.svc.cluster.local:*" in hosts and "*" not in hosts
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kfops-mlflow-db", "key": "password"}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "kfops-platform"


def test_mlflow_allowed_hosts_admit_the_service_names_only():
    """MLflow's own Host check (the function its middleware calls) with the Deployment's --allowed-hosts."""
    from mlflow.server.security_utils import is_allowed_host_header, is_health_endpoint

    objects = list(_render(OVERLAYS[0]))
    args = pod_specs(_one(objects, "Deployment", "mlflow"))["containers"][0]["args"]
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    service = _one(objects, "Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    for name in ("mlflow", "mlflow.kfops", "mlflow.kfops.svc", "mlflow.kfops.svc.cluster.local", "localhost"):
        assert is_allowed_host_header(hosts, f"{name}:{port}"), name
    for host in ("evil.example.com", f"mlflow.other.svc.cluster.local:{port}", f"10.1.2.3:{port}"):
        assert not is_allowed_host_header(hosts, host), host
    # kubelet probes send the pod IP as Host: /health is exempt from the check
    container = pod_specs(_one(objects, "Deployment", "mlflow"))["containers"][0]
    assert is_health_endpoint(container["readinessProbe"]["httpGet"]["path"])


def test_platform_config_map_serves_the_compiled_pipelines(objects):
    """Every key the compiled pipelines take from ConfigMap kfops-platform exists, and every Secret key they take
    is listed in manifests/secrets.yaml."""
    from kfops.pipelines.submit_inputs import suite_pipelines

    data = _one(objects, "ConfigMap", "kfops-platform")["data"]
    specs = load_secret_specs(SECRETS_FILE)
    for name, path in suite_pipelines().items():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 2, f"{name}: no kfp-kubernetes platform spec (run `kfops compile`)"
        for executor, config in docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
            for entry in config["configMapAsEnv"]:
                assert entry["configMapName"] == "kfops-platform"
                assert {k["configMapKey"] for k in entry["keyToEnv"]} <= set(data), (name, executor)
            for entry in config["secretAsEnv"]:
                assert {k["secretKey"] for k in entry["keyToEnv"]} <= set(specs[entry["secretName"]].keys)
    poddefault_keys = {
        e["valueFrom"]["configMapKeyRef"]["key"]
        for o in objects
        if o["kind"] == "PodDefault"
        for e in o["spec"]["env"]
        if "configMapKeyRef" in e.get("valueFrom", {})
    }
    assert poddefault_keys <= set(data)


def test_tensorboard_pod_gets_the_s3_settings():
    objects = list(_render(MANIFESTS / "overlays" / "production"))
    boards = [o for o in objects if o["kind"] == "Tensorboard"]
    poddefault = _one(objects, "PodDefault", "kfops-s3-access")
    # the controller copies the Tensorboard's labels onto its pod, which the PodDefault's selector must match
    assert _selects(poddefault["spec"]["selector"], boards[0]["metadata"]["labels"])
    assert boards[0]["spec"]["logspath"].startswith("s3://") and boards[0]["spec"]["logspath"].endswith("/tensorboard/")
    env = {e["name"] for e in poddefault["spec"]["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT", "S3_USE_HTTPS"} <= env


# ------------------------------------------------------------------------------------------------ init script
_STUB_MC = """#!/bin/sh
echo "$*" >> "$MC_LOG"
case "$1 $2 $3" in
  "alias set "*)
    count=$(cat "$MC_STATE/alias" 2>/dev/null || echo 0); count=$((count + 1)); echo "$count" > "$MC_STATE/alias"
    [ "$count" -ge "${MC_ALIAS_OK_AFTER:-1}" ] ;;
  "admin user info") echo "AccessKey: $4"; [ -f "$MC_STATE/attached" ] && echo "PolicyName: kfops-readwrite"; true ;;
  "admin policy attach") touch "$MC_STATE/attached" ;;
esac
"""


def _run_init(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    (bin_dir / "mc").write_text(_STUB_MC)
    (bin_dir / "sleep").write_text("#!/bin/sh\n")  # no real waiting
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    log = tmp_path / "mc.log"
    log.unlink(missing_ok=True)
    result = subprocess.run(
        ["/bin/sh", str(BASE / "minio" / "bucket-init.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "MC_LOG": str(log),
            "MC_STATE": str(state),
            "MINIO_ENDPOINT": "http://minio:9000",
            "KFOPS_BUCKETS": "mlflow kfops",
            "MINIO_ROOT_USER": "root-user",
            "MINIO_ROOT_PASSWORD": "root-password-1",
            "AWS_ACCESS_KEY_ID": "kfopsapp",
            "AWS_SECRET_ACCESS_KEY": "app-secret-1",
            **env,
        },
    )
    return result, log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs /bin/sh")
def test_bucket_init_script_is_idempotent(tmp_path):
    """The init Job's script against a stand-in `mc` that records its calls: buckets, the policy, the suite's
    user, the policy attached once; a second run attaches nothing new."""
    result, calls = _run_init(tmp_path, MC_ALIAS_OK_AFTER="3")
    assert result.returncode == 0, result.stderr
    assert calls == [
        "alias set kfops http://minio:9000 root-user root-password-1",
        "alias set kfops http://minio:9000 root-user root-password-1",
        "alias set kfops http://minio:9000 root-user root-password-1",
        "mb --ignore-existing kfops/mlflow",
        "mb --ignore-existing kfops/kfops",
        "admin policy create kfops kfops-readwrite /config/kfops-readwrite.json",
        "admin user add kfops kfopsapp app-secret-1",
        "admin user info kfops kfopsapp",
        "admin policy attach kfops kfops-readwrite --user kfopsapp",
    ]
    result, calls = _run_init(tmp_path)
    assert result.returncode == 0
    assert not any(c.startswith("admin policy attach") for c in calls)
    assert "already attached" in result.stdout


def test_bucket_init_script_gives_up_with_a_reason(tmp_path):
    result, calls = _run_init(tmp_path, MC_ALIAS_OK_AFTER="1000")
    assert result.returncode == 1
    assert len(calls) == 60
    assert "did not accept the root credentials within 5 minutes" in result.stderr
    assert "kfops-minio-root" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("secrets: []\n", "expected a non-empty `secrets:` list"),
        ("secrets:\n  - keys: {a: $A}\n", "secrets entry 1: needs a `name`"),
        ("secrets:\n  - name: s3\n", "secrets entry 1 (s3): needs `keys`"),
        ("secrets:\n  - name: s3\n    keys: {AWS_ACCESS_KEY_ID: AWS_ACCESS_KEY_ID}\n", "needs $VARIABLE"),
        ("secrets:\n  - {name: a, keys: {k: $K}}\n  - {name: a, keys: {k: $K}}\n", "Secret 'a' is listed twice"),
    ],
)
def test_a_malformed_secrets_list_is_an_error_naming_the_entry(tmp_path, text, message):
    from kfops.components.contracts import KfopsError

    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    with pytest.raises(KfopsError, match=re.escape(message)):
        load_secret_specs(path)
