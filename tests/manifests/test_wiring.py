"""Wiring (issue #18): every Secret, ConfigMap, ServiceAccount, PVC, Service and port that the suite's pods and
generated objects refer to resolves in every rendered overlay, and ``kfops platform check`` names each one that
does not, with where it is used.

Real parts throughout: overlays rendered with ``kubectl kustomize``, the committed compiled pipelines, the suite's
own builders (InferenceService, Katib Experiment, TrainJob), KFP's compiler with kfp-kubernetes for a probe
pipeline. No cluster is needed: a reference resolves when the rendered objects hold it.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from kfops.cli import main
from kfops.pipeline_wiring import pipeline_references, pipeline_tasks, read_pipeline, step_name
from kfops.platform_manifests import load_secret_specs, render_overlay
from kfops.platform_wiring import (
    PLATFORM_PROVIDED,
    TRAINING_ENV_KEYS,
    Inventory,
    Reference,
    SuiteSources,
    check_references,
    check_wiring,
    rendered_references,
    service_addresses,
    suite_references,
)
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
SECRETS_FILE = MANIFESTS / "secrets.yaml"
OVERLAYS = sorted(p.parent for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
COMPILED = REPO_ROOT / "pipelines" / "compiled"


def _render(overlay: Path) -> tuple[dict, ...]:
    """The rendered overlay: needs kubectl with kustomize v5 (a skip naming it when missing, a failure in CI)."""
    require("kubectl")
    return _rendered(overlay)


@cache
def _rendered(overlay: Path) -> tuple[dict, ...]:
    return tuple(render_overlay(overlay))


@cache
def _problems(overlay: Path) -> tuple[str, ...]:
    specs = load_secret_specs(SECRETS_FILE)
    return tuple(check_wiring(overlay, list(_render(overlay)), specs, SECRETS_FILE))


def _about(label: str, problems) -> list[str]:
    """The problem lines about the object ``label`` ("Secret kfops-training-env")."""
    pattern = re.compile(rf"^{re.escape(label)}[ ,]")
    return [p for p in problems if pattern.match(p)]


def _scratch_overlay(tmp_path: Path, patches: list[str]) -> Path:
    """An overlay in tmp_path over the real base (namespace kfops) with these strategic-merge patches."""
    folder = tmp_path / "scratch"
    folder.mkdir(parents=True)
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "kfops",
        "resources": [os.path.relpath(MANIFESTS / "base", folder)],
        "patches": [{"patch": patch} for patch in patches],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


# ------------------------------------------------------------------------------------------------ the overlays
def test_there_are_overlays_to_check():
    assert {p.name for p in OVERLAYS} >= {"local", "production"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_reference_resolves_in_the_overlay(overlay):
    assert _problems(overlay) == ()


def test_feasts_redis_is_wiring_where_the_overlay_includes_the_feature_store(tmp_path):
    """The feature store is an add-on (manifests/feature-store): an overlay that includes it must have the Redis
    Service Feast's config names; one that drops that Service is told so, with who names it."""
    specs = load_secret_specs(SECRETS_FILE)
    folder = tmp_path / "with-features"
    folder.mkdir()
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "kfops",
        "resources": [os.path.relpath(MANIFESTS / "overlays" / "production", folder),
                      os.path.relpath(MANIFESTS / "feature-store", folder)],
    }  # fmt: skip
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert check_wiring(folder, list(_render(folder)), specs, SECRETS_FILE) == []
    doc["patches"] = [
        {"patch": "$patch: delete\napiVersion: v1\nkind: Service\nmetadata:\n  name: kfops-feature-redis\n"}
    ]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    objects = render_overlay(folder)
    assert check_wiring(folder, objects, specs, SECRETS_FILE) == [
        "Service kfops-feature-redis (port 6379), used by Feast's manifests/feature-store/feature_store.yaml "
        f"(online_store.connection_string), is not in overlay {folder}"
    ]


def test_every_source_the_issue_names_is_read():
    """Each source really yields references: a renamed component function or a moved file would otherwise make
    the check pass by reading nothing."""
    specs = load_secret_specs(SECRETS_FILE)
    refs, created = suite_references(SuiteSources.for_manifests(MANIFESTS), specs, "kfops", "manifests/secrets.yaml")
    found = {(r.kind, r.name) for r in refs}
    users = " | ".join(sorted({r.used_by for r in refs}))
    for needed in [
        ("Secret", "kfops-s3"),  # kfp-kubernetes secretAsEnv in every pipeline
        ("ConfigMap", "kfops-platform"),  # configMapAsEnv
        ("ServiceAccount", "kfops-model-reader"),  # the InferenceService deploy creates, the router example
        ("ServiceAccount", "kfops-pipeline-runner"),  # kfops submit's runs
        ("ServingRuntime", "kfops-pytorch-tabular"),  # the InferenceService's model
        ("Secret", "kfops-training-env"),  # Katib trial template, TrainJob
        ("ClusterTrainingRuntime", "torch-distributed"),  # TrainJob
        ("Service", "kfops-feature-redis"),  # Feast's online store
        ("Service", "prometheus-operated"),  # the rollout's prometheus_url
        ("Service", "fraud-detector-stable-predictor"),  # the router's --stable
        ("Service", "minio"),  # the kfops-s3 Secret's s3-endpoint annotation
    ]:
        assert needed in found, needed
    for user in [
        "the InferenceService (components/isvc/spec.py) that pipelines/compiled/deployment.yaml step deploy creates",
        "the Katib Experiment trial template (components/sweep/katib.py) that pipelines/compiled/katib-sweep.yaml",
        "the TrainJob (components/train/trainjob.py) that components/train/train_distributed.yaml",
        "InferenceService fraud-detector in manifests/serving/examples/router-inferenceservice.yaml",
        "Feast's manifests/feature-store/feature_store.yaml",
        "Secret kfops-s3 in manifests/secrets.yaml",
    ]:
        assert user in users, user
    assert [o["metadata"]["name"] for o in created] == [
        "fraud-detector-stable",
        "fraud-detector-challenger",
        "fraud-detector",
    ]
    every_pipeline = {r.used_by.split(" step")[0] for r in refs if r.at == "kfp-kubernetes secretAsEnv"}
    assert every_pipeline >= {f"pipelines/compiled/{p.name}" for p in COMPILED.glob("*.yaml")}


def test_rendered_objects_own_references_are_read():
    production = next(o for o in OVERLAYS if o.name == "production")
    refs = rendered_references(list(_render(production)))
    found = {(r.kind, r.name, r.key, r.port, r.used_by, r.at) for r in refs}
    assert ("PersistentVolumeClaim", "minio-data", None, None, "Deployment kfops/minio",
            "spec.template.spec.volumes[data].persistentVolumeClaim") in found  # fmt: skip
    assert ("Service", "mlflow", None, 5000, "ConfigMap kfops/kfops-platform", "data.MLFLOW_TRACKING_URI") in found
    assert ("Service", "mlflow-postgres", None, 5432) in {r[:4] for r in found}  # --backend-store-uri
    assert ("ConfigMap", "kfops-platform", "S3_ENDPOINT") in {r[:3] for r in found}  # the PodDefault
    assert ("ServiceAccount", "kfops-pipeline-runner") in {r[:2] for r in found}  # the RoleBinding's subject
    assert not [r for r in refs if r.kind == "Secret"], "the rendered objects' Secrets are check_secret_references'"


# ------------------------------------------------------------------------------------------------ it can fail
def test_platform_check_names_a_deleted_object_and_where_it_is_used(tmp_path, capsys):
    """A scratch overlay over the real base with one referenced object deleted (``$patch: delete``), one claim
    deleted and a Service port moved: `kfops platform check` exits 2 and names each, with its users."""
    require("kubectl")
    baseline = _scratch_overlay(tmp_path / "before", [])
    broken = _scratch_overlay(
        tmp_path / "after",
        [
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: kfops-model-reader\n$patch: delete\n",
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: minio-data\n$patch: delete\n",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: mlflow\nspec:\n  ports:\n"
            "    - name: http\n      port: 5001\n      targetPort: http\n      protocol: TCP\n"
            "    - $patch: replace\n",
        ],
    )
    main(["platform", "check", str(baseline), "--secrets-file", str(SECRETS_FILE)])
    before = {
        line.removeprefix("  - ").replace(str(baseline), "OVERLAY") for line in capsys.readouterr().err.splitlines()
    }
    code = main(["platform", "check", str(broken), "--secrets-file", str(SECRETS_FILE)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line.removeprefix("  - ") for line in err.splitlines()[1:]]
    new = [line for line in lines if line.replace(str(broken), "OVERLAY") not in before]
    assert len(new) == 3, new
    assert (
        "PersistentVolumeClaim minio-data, used by Deployment kfops/minio "
        f"(spec.template.spec.volumes[data].persistentVolumeClaim), is not in overlay {broken}"
    ) in new
    assert (
        "Service mlflow (port 5000), used by ConfigMap kfops/kfops-platform (data.MLFLOW_TRACKING_URI), is not in "
        f"overlay {broken}: Service mlflow has ports 5001 (the overlay)"
    ) in new
    (account,) = [line for line in new if line.startswith("ServiceAccount kfops-model-reader, used by ")]
    assert account.endswith(f", is not in overlay {broken}"), account
    for user in (
        "the InferenceService (components/isvc/spec.py) that pipelines/compiled/deployment.yaml step deploy creates "
        "(spec.predictor.serviceAccountName)",
        "the InferenceService (components/isvc/spec.py) that pipelines/compiled/training.yaml step deploy creates "
        "(spec.predictor.serviceAccountName)",
        "InferenceService fraud-detector-stable in manifests/serving/examples/router-inferenceservice.yaml "
        "(spec.predictor.serviceAccountName)",
        "InferenceService fraud-detector-challenger in manifests/serving/examples/router-inferenceservice.yaml "
        "(spec.predictor.serviceAccountName)",
    ):
        assert user in account, user


def test_a_listed_secret_without_a_key_a_trial_reads(tmp_path):
    """With kfops-training-env listed but missing a key the trials need, the one problem names the key, the Katib
    trial template and the keys the list has; listed with every key, it resolves (the TrainJob's keys are
    optional)."""
    production = next(o for o in OVERLAYS if o.name == "production")
    listed = yaml.safe_load(SECRETS_FILE.read_text())
    listed["secrets"] = [s for s in listed["secrets"] if s["name"] != "kfops-training-env"]
    entry = {"name": "kfops-training-env", "keys": {k: f"${k}" for k in TRAINING_ENV_KEYS}}
    listed["secrets"].append(entry)
    secrets_file = tmp_path / "secrets.yaml"
    sources = SuiteSources.for_manifests(MANIFESTS)

    secrets_file.write_text(yaml.safe_dump(listed))
    complete = check_wiring(production, list(_render(production)), load_secret_specs(secrets_file), secrets_file,
                            sources)  # fmt: skip
    assert _about("Secret kfops-training-env", complete) == []

    del entry["keys"]["MLFLOW_S3_ENDPOINT_URL"]
    secrets_file.write_text(yaml.safe_dump(listed))
    problems = check_wiring(production, list(_render(production)), load_secret_specs(secrets_file), secrets_file,
                            sources)  # fmt: skip
    assert _about("Secret kfops-training-env", problems) == [
        "Secret kfops-training-env (key MLFLOW_S3_ENDPOINT_URL), used by the Katib Experiment trial template "
        "(components/sweep/katib.py) that pipelines/compiled/katib-sweep.yaml step katib-sweep creates "
        f"(trialSpec.spec.template.spec.containers[training].envFrom[0].secretRef), is not in overlay {production}: "
        f"Secret kfops-training-env has keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_URI "
        f"({secrets_file})"
    ]


def test_a_platform_service_counts_only_where_its_provider_is_assumed():
    """default-editor resolves in an overlay with kubeflow.org objects (a profile namespace) only; the cluster's
    Prometheus only on the operator's port."""
    (entry,) = [p for p in PLATFORM_PROVIDED if p.name == "default-editor"]
    editor = Reference("ServiceAccount", "default-editor", "the RoleBinding")
    ref = Reference("Service", "prometheus-operated", "the rollout", port=9090, namespace="monitoring")
    wrong_port = Reference("Service", "prometheus-operated", "the rollout", port=9091, namespace="monitoring")
    without = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "kfops"}}]
    with_kubeflow = [*without, {"apiVersion": f"{entry.requires_api_group}/v1alpha1", "kind": "PodDefault",
                                "metadata": {"name": "m", "namespace": "kfops"}}]  # fmt: skip
    assert check_references([editor, ref], Inventory(with_kubeflow, {}), "with") == []
    assert check_references([wrong_port], Inventory(without, {}), "with") == [
        "Service prometheus-operated in namespace monitoring (port 9091), used by the rollout, is not in overlay "
        "with: Service prometheus-operated has ports 9090 (the Prometheus Operator)"
    ]
    assert check_references([editor], Inventory(without, {}), "without") == [
        "ServiceAccount default-editor, used by the RoleBinding, is not in overlay without: Kubeflow's profile "
        "controller (every profile namespace) provides it, and the overlay renders no kubeflow.org object (it does "
        "not assume that provider)"
    ]
    other = Reference("Service", "vault", "a step", port=8200, namespace="security")
    assert check_references([other], Inventory(without, {}), "without") == [
        "Service vault in namespace security (port 8200), used by a step, is not in overlay without: the overlay "
        "renders nothing into namespace security and no known platform part does"
    ]


# ------------------------------------------------------------------------------------------------ reading sources
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://mlflow.kfops.svc.cluster.local:5000", [("mlflow", "kfops", 5000)]),
        ("postgresql+psycopg2://user:pw@mlflow-postgres:5432/mlflow", [("mlflow-postgres", None, 5432)]),
        ("--stable=http://fraud-detector-stable-predictor", [("fraud-detector-stable-predictor", None, 80)]),
        ("https://scorer.ml.svc/v1", [("scorer", "ml", 443)]),
        ("minio.kfops.svc.cluster.local:9000", [("minio", "kfops", 9000)]),
        ("--allowed-hosts=mlflow:*,mlflow.kfops.svc:*", [("mlflow", "kfops", None)]),
        ("s3://kfops/feature-store", []),
        ("https://github.com/kfops/kfops/blob/main/RUNBOOK.md", []),
        ("http://localhost:5000", []),
        ("http://127.0.0.1:9090", []),
        ("http://{{.Name}}:8080", []),
        ("grpc://triton.serving.svc:8001 and redis://cache:6379", [("triton", "serving", 8001), ("cache", None, 6379)]),
    ],
)
def test_service_addresses(text, expected):
    assert service_addresses(text) == expected


def test_compiled_steps_get_their_default_parameters_through_nested_dags():
    spec, platform = read_pipeline(COMPILED / "training.yaml")
    tasks = {step_name(t.path): t for t in pipeline_tasks(spec, platform)}
    assert tasks["deploy"].function == "deploy"
    assert tasks["deploy"].parameters["service_account"] == "kfops-model-reader"  # root default, two DAGs down
    assert tasks["rollout"].parameters["prometheus_url"] == "http://prometheus-operated.monitoring.svc:9090"
    assert tasks["deploy"].platform["secretAsEnv"][0]["secretName"] == "kfops-s3"


PROBE_PIPELINE = """
from kfp import dsl, kubernetes


@dsl.component(base_image="python:3.11")
def step(x: str) -> str:
    return x


@dsl.pipeline(name="wiring-probe")
def probe(creds: str = "probe-creds", url: str = "http://scorer.kfops.svc.cluster.local:8081"):
    with dsl.If(url != ""):
        task = step(x=url)
        kubernetes.use_secret_as_env(task, secret_name=creds, secret_key_to_env={"token": "TOKEN"})
        kubernetes.use_secret_as_volume(task, secret_name="probe-certs", mount_path="/certs", optional=True)
        kubernetes.use_config_map_as_env(task, config_map_name="probe-env", config_map_key_to_env={"a": "A"})
        kubernetes.use_config_map_as_volume(task, config_map_name="probe-config", mount_path="/etc/probe")
        kubernetes.mount_pvc(task, pvc_name="probe-data", mount_path="/data")
        kubernetes.set_image_pull_secrets(task, ["probe-registry"])
        later = step(x=task.output)
        kubernetes.mount_pvc(later, pvc_name=task.output, mount_path="/data")
"""


def test_kfp_kubernetes_settings_of_a_compiled_probe_pipeline(tmp_path):
    """Every kfp-kubernetes setting the reader knows, compiled by KFP itself: constant names, a name from a
    pipeline parameter (through a condition's DAG), and a claim named by another step (unknown: skipped)."""
    import importlib.util

    from kfp import compiler

    # A module of its own: KFP reads the annotations, which this module's `from __future__` turns into strings.
    source = tmp_path / "wiring_probe.py"
    source.write_text(PROBE_PIPELINE)
    module_spec = importlib.util.spec_from_file_location("wiring_probe", source)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    path = tmp_path / "probe.yaml"
    compiler.Compiler().compile(module.probe, str(path))
    refs = pipeline_references(path, "probe.yaml", "kfops")
    assert sorted((r.kind, r.name, r.key, r.port, r.optional, r.at, r.used_by) for r in refs) == [
        ("ConfigMap", "probe-config", None, None, False, "kfp-kubernetes configMapAsVolume", "probe.yaml step step"),
        ("ConfigMap", "probe-env", "a", None, False, "kfp-kubernetes configMapAsEnv", "probe.yaml step step"),
        ("PersistentVolumeClaim", "probe-data", None, None, False, "kfp-kubernetes pvcMount", "probe.yaml step step"),
        ("Secret", "probe-certs", None, None, True, "kfp-kubernetes secretAsVolume", "probe.yaml step step"),
        ("Secret", "probe-creds", "token", None, False, "kfp-kubernetes secretAsEnv", "probe.yaml step step"),
        ("Secret", "probe-registry", None, None, False, "kfp-kubernetes imagePullSecret", "probe.yaml step step"),
        ("Service", "scorer", None, 8081, False, "parameter x", "probe.yaml step step"),
    ]


def test_generated_objects_follow_the_parameters(tmp_path):
    """The Katib trial template is built by katib.build_experiment from the step's parameters: a service
    account passed to the step becomes the trials' (and a reference); the Secret's keys are the trials' needs."""
    _, platform = read_pipeline(COMPILED / "katib-sweep.yaml")
    document = next(yaml.safe_load_all((COMPILED / "katib-sweep.yaml").read_text()))
    document["root"]["inputDefinitions"]["parameters"]["env_secret"]["defaultValue"] = "team-training-env"
    for task in document["root"]["dag"]["tasks"].values():
        if task["componentRef"]["name"] == "comp-katib-sweep":
            task["inputs"]["parameters"]["service_account"] = {"runtimeValue": {"constant": "kfops-trials"}}
    edited = tmp_path / "katib-sweep.yaml"
    edited.write_text(yaml.safe_dump(document) + "---\n" + yaml.safe_dump({"platforms": {"kubernetes": platform}}))
    refs = [r for r in pipeline_references(edited, "katib-sweep.yaml", "kfops") if "katib.py" in r.used_by]
    assert {(r.kind, r.name, r.key) for r in refs} == {
        ("ServiceAccount", "kfops-trials", None),
        *{("Secret", "team-training-env", key) for key in TRAINING_ENV_KEYS},
    }
    assert {r.at for r in refs if r.kind == "ServiceAccount"} == {"trialSpec.spec.template.spec.serviceAccountName"}
