"""The deploy stage against a real sqlite MLflow registry and a fake Kubernetes API server (fake_kube.py).

Each test asserts the exact requests deploy, promote, rollback and set-percent send (method, path, content type,
body) and replays status objects shaped as KServe writes them; every object the fake stores is validated against
KServe's real CRD schema, and so is every manifest built here (``tests.crd_schemas``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kfops.components.contracts import TAG_BLESSED, KfopsError
from kfops.components.contracts.delivery import DeploySpec
from kfops.components.deploy.logic import deploy
from kfops.components.isvc import traffic
from kfops.components.isvc.patches import percent_write, plan_deploy, promote_write
from kfops.components.isvc.spec import (
    ANNOTATION_MODEL,
    ANNOTATION_STABLE_PREDICTOR,
    ANNOTATION_STABLE_URI,
    LABEL_CANARY_VERSION,
    LABEL_VERSION,
    build_inferenceservice,
    serving_state,
)
from kfops.components.isvc.traffic import ReadyTimeout
from kfops.components.kube import KubeError, connect
from tests.components.fake_kube import (
    MERGE_PATCH,
    FakeKube,
    isvc_path,
    knative_status,
    manifest_of,
    merge_patch,
    standard_status,
)
from tests.conftest import free_port
from tests.crd_schemas import schema_errors

MODEL = "fraud-detector"
NS = "models"
PATH = isvc_path(NS, MODEL)
COLLECTION = isvc_path(NS)
WRITE_QUERY = {"fieldManager": "kfops", "fieldValidation": "Strict"}
# deploy reads the API's OpenAPI v3 index, then the serving.kserve.io/v1beta1 document (isvc.capabilities)
DISCOVERY = [("GET", "/openapi/v3"), ("GET", "/openapi/v3/apis/serving.kserve.io/v1beta1")]
S3 = {v: f"s3://mlflow/1/models/m-{v:04d}/artifacts" for v in (2, 3, 4, 6)}
PROXIED = "mlflow-artifacts:/1/models/m-0005/artifacts"
RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
FAST = {"timeout_s": 5.0, "poll_s": 0.01}


def rev(n: int) -> str:
    return f"{MODEL}-predictor-{n:05d}"


def model_block(uri: str, resources: dict = RESOURCES) -> dict:
    version = next(str(v) for v, u in S3.items() if u == uri)
    return {
        "name": "kserve-container",
        "modelFormat": {"name": "kfops-mlflow-pyfunc", "version": "1"},
        "runtime": "kfops-pytorch-tabular",
        "protocolVersion": "v2",
        "storageUri": uri,
        "resources": resources,
        # The server reads the registered version from here (the files copied from storage do not say it).
        "env": [{"name": "KFOPS_MODEL_VERSION", "value": version}],
    }


def predictor(version: str, uri: str, resources: dict = RESOURCES) -> dict:
    """The predictor deploy writes for the default spec (written out, not built by the code under test)."""
    return {
        "minReplicas": 1,
        "maxReplicas": 3,
        "labels": {LABEL_VERSION: version},
        "serviceAccountName": "kfops-model-reader",
        "model": model_block(uri, resources),
    }


# ------------------------------------------------------------------------------------------------ fixtures
@dataclass
class Registry:
    uri: str
    local_path: str  # where version 1 (a real logged model) is: a local path


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """A real sqlite MLflow registry. fraud-detector: 1 a tiny logged pyfunc (local path, blessed); 2, 3, 4, 6 as
    a server with an s3:// artifact root records them (2 champion, 3 unblessed, 4 challenger, 6 no blessing tag);
    5 behind the artifact proxy (mlflow-artifacts:/). no-champion: one blessed version, no alias."""
    import mlflow

    root = tmp_path_factory.mktemp("deploy-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    with pytest.MonkeyPatch.context() as mp:
        import mlflow.pyfunc

        class Echo(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input: list[str], params=None) -> list[str]:
                return model_input

        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("deploy-tests", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            logged = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        mlflow.register_model(logged.model_uri, MODEL)
    versions = {1: None, 2: S3[2], 3: S3[3], 4: S3[4], 5: PROXIED, 6: S3[6]}
    blessed = {1: "true", 2: "true", 3: "false", 4: "true", 5: "true"}
    for number, source in versions.items():
        if source is not None:
            assert client.create_model_version(MODEL, source).version == number
        if number in blessed:
            client.set_model_version_tag(MODEL, str(number), TAG_BLESSED, blessed[number])
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.set_registered_model_alias(MODEL, "challenger", "4")
    client.create_registered_model("no-champion")
    client.create_model_version("no-champion", S3[2])
    client.set_model_version_tag("no-champion", "1", TAG_BLESSED, "true")
    return Registry(uri, client.get_model_version_download_uri(MODEL, "1"))


@pytest.fixture
def fake():
    server = FakeKube().start()
    yield server
    server.stop()


@pytest.fixture
def api(fake):
    return connect(host=fake.url)


def spec(**changes) -> DeploySpec:
    return DeploySpec(MODEL, **({"namespace": NS} | changes))


def stable_object(fake: FakeKube, mode: str = "knative", version: str = "2") -> dict:
    """What a first deploy of ``version`` left in the cluster."""
    return fake.put(build_inferenceservice(spec(mode=mode), version, S3[int(version)]))


def canary_object(fake: FakeKube, mode: str = "knative", **changes) -> dict:
    """What a canary deploy of version 4 at 10% beside version 2 left in the cluster."""
    live = stable_object(fake, mode)
    body = plan_deploy(spec(mode=mode, **changes), "4", S3[4], live).write.body
    return fake.put(merge_patch(live, body), generation=2)


def knative_stable(generation: int = 1, revision: int = 1) -> dict:
    return knative_status(generation, [(rev(revision), 100, True)], rev(revision), rev(revision))


def knative_canary(generation: int = 2, percent: int = 10) -> dict:
    split = [(rev(2), percent, True), (rev(1), 100 - percent, False)]
    return knative_status(generation, split, rev(2), rev(2), rolled_out=rev(1))


def assert_writes(fake: FakeKube, bodies: list[tuple[str, str, dict]]) -> None:
    """The writes sent: (method, path, body) each, merge patches as such, all with strict field validation."""
    writes = fake.writes()
    assert [(w.method, w.path, w.body) for w in writes] == bodies
    for write in writes:
        assert write.content_type == (MERGE_PATCH if write.method == "PATCH" else "application/json")
        assert write.query == WRITE_QUERY


def assert_valid_stored(fake: FakeKube) -> dict:
    stored = fake.stored(NS, MODEL)
    assert schema_errors(manifest_of(stored)) == []
    return stored


# ------------------------------------------------------------------------------------------------ manifests
@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({}, lambda p: p["model"] == model_block(S3[2]) and "canaryTrafficPercent" not in p),
        ({"mode": "standard"}, lambda p: "name" not in p and p["minReplicas"] == 1),
        (
            {"gpus": 2, "image": "ghcr.io/kfops/kfops-serving-cuda:0.1.0"},
            lambda p: (
                p["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
                and "nvidia.com/gpu" not in p["model"]["resources"]["requests"]
                and p["model"]["image"] == "ghcr.io/kfops/kfops-serving-cuda:0.1.0"
            ),
        ),
        (
            {"logger_url": "http://payload-logger.models.svc.cluster.local", "logger_mode": "request"},
            lambda p: p["logger"] == {"url": "http://payload-logger.models.svc.cluster.local", "mode": "request"},
        ),
        ({"service_account": ""}, lambda p: "serviceAccountName" not in p),
        ({"service_account": "s3-reader"}, lambda p: p["serviceAccountName"] == "s3-reader"),
        (
            {"scale_metric": "concurrency", "scale_target": 8, "min_replicas": 0, "max_replicas": 5},
            lambda p: (
                (p["scaleMetric"], p["scaleTarget"], p["minReplicas"], p["maxReplicas"]) == ("concurrency", 8, 0, 5)
            ),
        ),
        (
            {"mode": "standard", "scale_metric": "cpu", "scale_target": 70, "min_replicas": 2, "max_replicas": 6},
            lambda p: (p["scaleMetric"], p["scaleTarget"], p["minReplicas"]) == ("cpu", 70, 2),
        ),
        (
            {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "512Mi", "memory_limit": "4Gi"},
            lambda p: (
                p["model"]["resources"]
                == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
            ),
        ),
        ({"protocol_version": "v1"}, lambda p: p["model"]["protocolVersion"] == "v1"),
    ],
)
def test_inferenceservice_manifests_match_the_crd_schema(changes, check):
    deploy_spec = spec(**changes)
    deploy_spec.check()
    obj = build_inferenceservice(deploy_spec, "2", S3[2])
    assert schema_errors(obj) == []
    assert check(obj["spec"]["predictor"])
    metadata = obj["metadata"]
    assert (metadata["name"], metadata["namespace"]) == (MODEL, NS)
    assert metadata["labels"][LABEL_VERSION] == "2" and metadata["labels"]["app.kubernetes.io/part-of"] == "kfops"
    mode = "Standard" if changes.get("mode") == "standard" else "Knative"
    assert metadata["annotations"] == {
        "serving.kserve.io/deploymentMode": mode,
        "serving.kserve.io/enable-prometheus-scraping": "true",
        ANNOTATION_MODEL: MODEL,
        ANNOTATION_STABLE_URI: S3[2],
    }


def test_canary_manifests_of_both_modes_match_the_crd_schema():
    for mode in ("knative", "standard"):
        live = build_inferenceservice(spec(mode=mode), "2", S3[2])
        for changes in ({}, {"gpus": 1, "cpu_limit": "4", "cpu_request": "2"}, {"canary_percent": 0}):
            body = plan_deploy(spec(mode=mode, **changes), "4", S3[4], live).write.body
            assert schema_errors(merge_patch(live, body)) == [], (mode, changes)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"name": "Fraud_Detector"}, "InferenceService name 'Fraud_Detector'"),
        ({"name": "f" * 48}, "at most 47 characters"),
        ({"namespace": "Models"}, "namespace 'Models'"),
        ({"mode": "serverless"}, "mode must be knative or standard"),
        ({"canary_percent": 101}, "canary_percent must be an integer from 0 to 100, got 101"),
        ({"cpu_limit": "one"}, "cpu_limit 'one' is not a Kubernetes quantity"),
        ({"cpu_request": "2", "cpu_limit": "1"}, "cpu_request '2' must be positive and at most cpu_limit '1'"),
        ({"memory_request": "3Gi"}, "memory_request '3Gi' must be positive and at most memory_limit '2Gi'"),
        ({"gpus": -1}, "gpus must be 0 or more"),
        ({"min_replicas": 4}, "max_replicas (3) must be at least 1 and at least min_replicas (4)"),
        ({"mode": "standard", "min_replicas": 0}, "cannot scale to zero"),
        ({"scale_metric": "gpu"}, "scale_metric must be one of cpu, memory, concurrency, rps, got 'gpu'"),
        ({"mode": "standard", "scale_metric": "rps"}, "scale_metric 'rps' needs Knative's autoscaler"),
        ({"scale_target": 5}, "scale_target 5 needs a scale_metric"),
        ({"logger_url": "payload-logger:8080"}, "logger_url 'payload-logger:8080' must be an http:// or https:// URL"),
        ({"logger_mode": "both"}, "logger_mode must be one of all, request, response, got 'both'"),
        ({"runtime": "Kfops Runtime"}, "runtime 'Kfops Runtime' is not a valid Kubernetes object name"),
        ({"protocol_version": "v3"}, "protocol_version must be v1 or v2"),
    ],
)
def test_bad_spec_is_refused_before_any_request(registry, fake, api, changes, named):
    with pytest.raises(KfopsError, match="deploy: ") as caught:
        deploy(spec(**changes), api=api, tracking_uri=registry.uri, **FAST)
    assert named in str(caught.value)
    assert fake.requests == []


# ------------------------------------------------------------------------------------------------ deploy
def test_first_deploy_creates_the_inferenceservice_and_waits_for_it(registry, fake, api):
    not_ready = knative_status(1, [], rev(1), "", ready=False, reason="RevisionMissing", message="revision missing")
    fake.statuses.extend([None, not_ready, knative_stable()])
    result = deploy(spec(), api=api, tracking_uri=registry.uri, **FAST)

    expected = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": MODEL,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": MODEL,
                "app.kubernetes.io/part-of": "kfops",
                "app.kubernetes.io/managed-by": "kfops",
                LABEL_VERSION: "2",
            },
            "annotations": {
                "serving.kserve.io/deploymentMode": "Knative",
                "serving.kserve.io/enable-prometheus-scraping": "true",
                ANNOTATION_MODEL: MODEL,
                ANNOTATION_STABLE_URI: S3[2],
            },
        },
        "spec": {"predictor": predictor("2", S3[2])},
    }
    assert fake.calls() == [
        ("GET", PATH),
        *DISCOVERY,
        ("POST", COLLECTION),
        ("GET", PATH),
        ("GET", PATH),
        ("GET", PATH),
    ]
    assert_writes(fake, [("POST", COLLECTION, expected)])
    assert (result.operation, result.version, result.storage_uri) == ("create", "2", S3[2])
    assert (result.stable_version, result.stable_storage_uri) == ("", "")
    assert result.manifest == expected and schema_errors(result.manifest) == []
    assert result.status == knative_stable() and result.url == f"http://{MODEL}.{NS}.example.com"
    assert serving_state(assert_valid_stored(fake)).describe() == f"version 2 ({S3[2]}) takes all traffic"


def test_knative_canary_patches_the_new_version_beside_the_stable_one(registry, fake, api):
    live = stable_object(fake)
    in_progress = knative_status(2, [(rev(1), 10, True), (rev(1), 90, False)], rev(2), rev(1), ready=False)
    # The stale status (generation 1) and the unready revision must not end the wait: two more reads.
    fake.statuses.extend([knative_stable(), knative_stable(), in_progress, knative_canary()])
    result = deploy(spec(version="challenger"), api=api, tracking_uri=registry.uri, **FAST)

    stable_predictor = json.dumps(predictor("2", S3[2]), sort_keys=True, separators=(",", ":"))
    patch = {
        "metadata": {
            "resourceVersion": live["metadata"]["resourceVersion"],
            "labels": {LABEL_CANARY_VERSION: "4", LABEL_VERSION: "2"},
            "annotations": {
                ANNOTATION_MODEL: MODEL,
                ANNOTATION_STABLE_URI: S3[2],
                ANNOTATION_STABLE_PREDICTOR: stable_predictor,
            },
        },
        "spec": {"predictor": predictor("4", S3[4]) | {"canaryTrafficPercent": 10}},
    }
    assert fake.calls() == [("GET", PATH), *DISCOVERY, ("PATCH", PATH)] + [("GET", PATH)] * 3
    assert_writes(fake, [("PATCH", PATH, patch)])
    assert (result.operation, result.version, result.stable_version, result.stable_storage_uri) == (
        "canary",
        "4",
        "2",
        S3[2],
    )
    assert result.status == knative_canary() and schema_errors(result.manifest) == []
    state = serving_state(assert_valid_stored(fake))
    assert (state.stable_version, state.stable_storage_uri, state.canary_version, state.canary_percent) == (
        "2",
        S3[2],
        "4",
        10,
    )


def test_standard_canary_adds_spec_canary_and_keeps_the_stable_predictor(registry, fake, api):
    live = stable_object(fake, "standard")
    fake.statuses.extend(
        [
            standard_status(1),
            standard_status(1),
            standard_status(2, [("v4", False, 10)]),
            standard_status(2, [("v4", True, 10)]),
        ]
    )
    result = deploy(spec(mode="standard", version="4", canary_percent=10), api=api, tracking_uri=registry.uri, **FAST)

    patch = {
        "metadata": {
            "resourceVersion": live["metadata"]["resourceVersion"],
            "labels": {LABEL_CANARY_VERSION: "4"},
            "annotations": {ANNOTATION_MODEL: MODEL},
        },
        "spec": {"canary": [{"trafficPercent": 10, "predictor": {"name": "v4"} | predictor("4", S3[4])}]},
    }
    assert fake.calls() == [("GET", PATH), *DISCOVERY, ("PATCH", PATH)] + [("GET", PATH)] * 3
    assert_writes(fake, [("PATCH", PATH, patch)])
    assert (result.operation, result.stable_version, result.stable_storage_uri) == ("canary", "2", S3[2])
    stored = assert_valid_stored(fake)
    assert stored["spec"]["predictor"] == live["spec"]["predictor"]
    state = serving_state(stored)
    assert (state.stable_version, state.canary_version, state.canary_percent, state.canary_name) == ("2", "4", 10, "v4")


def test_same_version_again_updates_the_managed_fields_only(registry, fake, api):
    live = stable_object(fake)
    fake.statuses.extend([knative_stable(), knative_stable(2, 2)])
    changed = {"cpu_request": "2", "cpu_limit": "2", "service_account": "", "max_replicas": 5}
    result = deploy(spec(**changed), api=api, tracking_uri=registry.uri, **FAST)

    resources = {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    patch = {
        "metadata": {
            "resourceVersion": live["metadata"]["resourceVersion"],
            "labels": {LABEL_VERSION: "2", LABEL_CANARY_VERSION: None},
            "annotations": {ANNOTATION_MODEL: MODEL, ANNOTATION_STABLE_URI: S3[2], ANNOTATION_STABLE_PREDICTOR: None},
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 5,
                "serviceAccountName": None,
                "labels": {LABEL_VERSION: "2"},
                "model": model_block(S3[2], resources),
                "canaryTrafficPercent": None,
            }
        },
    }
    assert_writes(fake, [("PATCH", PATH, patch)])
    assert result.operation == "update" and result.stable_version == "2"
    assert "serviceAccountName" not in assert_valid_stored(fake)["spec"]["predictor"]


def test_canary_percent_100_replaces_the_model_at_once(registry, fake, api):
    stable_object(fake)
    fake.statuses.extend([knative_stable(), knative_stable(2, 2)])
    result = deploy(spec(version="4", canary_percent=100), api=api, tracking_uri=registry.uri, **FAST)
    (write,) = fake.writes()
    assert write.body["spec"]["predictor"]["model"]["storageUri"] == S3[4]
    assert write.body["spec"]["predictor"]["canaryTrafficPercent"] is None
    assert write.body["metadata"]["labels"] == {LABEL_VERSION: "4", LABEL_CANARY_VERSION: None}
    assert (result.operation, result.stable_version, result.stable_storage_uri) == ("replace", "2", S3[2])
    assert serving_state(assert_valid_stored(fake)).stable_version == "4"


def test_a_running_canary_or_another_mode_is_refused_after_one_read(registry, fake, api):
    canary_object(fake)
    fake.statuses.append(knative_canary())
    with pytest.raises(KfopsError, match=r"has a canary in progress \(canary version 4 .* at 10%.*promote it or roll"):
        deploy(spec(version="4"), api=api, tracking_uri=registry.uri, **FAST)
    with pytest.raises(KfopsError, match="runs in Knative mode; KServe cannot change the deployment mode"):
        deploy(spec(mode="standard", version="4"), api=api, tracking_uri=registry.uri, **FAST)
    assert fake.calls() == [("GET", PATH), *DISCOVERY] * 2


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        (MODEL, "7", "model fraud-detector has no version 7 (its versions: 1, 2, 3, 4, 5, 6)"),
        (MODEL, "3", "model fraud-detector version 3 is not blessed (kfops.blessed is 'false')"),
        (MODEL, "6", "model fraud-detector version 6 is not blessed (kfops.blessed is not set)"),
        ("no-champion", "champion", "model no-champion has no alias 'champion' (its aliases: none)"),
        ("not-registered", "champion", "model 'not-registered' does not exist"),
        (MODEL, "5", "stored at mlflow-artifacts:/1/models/m-0005/artifacts, an artifact proxied by the MLflow server"),
        (MODEL, "1", "a local path a cluster cannot read"),
    ],
)
def test_unknown_unblessed_or_unfetchable_versions_are_never_deployed(registry, fake, api, model, version, message):
    with pytest.raises(KfopsError) as caught:
        deploy(DeploySpec(model, version=version, namespace=NS), api=api, tracking_uri=registry.uri, **FAST)
    assert message in str(caught.value)
    if version == "5":
        assert "--no-serve-artifacts" in str(caught.value)
    assert fake.requests == []


# ------------------------------------------------------------------------------------------------ timeouts
def test_a_canary_that_never_gets_ready_times_out_and_moves_nothing_more(registry, fake, api):
    stable_object(fake)
    failing = knative_status(
        2,
        [(rev(1), 10, True), (rev(1), 90, False)],
        rev(2),
        rev(1),
        ready=False,
        reason="RevisionFailed",
        message="Revision fraud-detector-predictor-00002 failed with message: Back-off pulling image",
    )
    fake.statuses.extend([knative_stable(), failing])
    with pytest.raises(ReadyTimeout) as caught:
        deploy(spec(version="4"), api=api, tracking_uri=registry.uri, timeout_s=0.3, poll_s=0.02)
    message = str(caught.value)
    assert "did not reach Ready=True with the latest revision ready and at 10% of traffic within 0.3 s" in message
    assert f"latest revision {rev(2)} is not ready (latest ready: {rev(1)})" in message
    assert "Ready=False (RevisionFailed: Revision fraud-detector-predictor-00002 failed" in message
    assert f"traffic {rev(1)} 10% (latest), {rev(1)} 90% (prev)" in message
    assert f"version 2 ({S3[2]}) keeps the traffic" in message
    assert (caught.value.stable_version, caught.value.stable_storage_uri) == ("2", S3[2])
    assert fake.calls()[:4] == [("GET", PATH), *DISCOVERY, ("PATCH", PATH)]
    assert len(fake.requests) > 5 and {r.method for r in fake.requests[4:]} == {"GET"}


def test_a_first_deploy_that_never_gets_ready_times_out(registry, fake, api):
    fake.statuses.append(None)
    with pytest.raises(ReadyTimeout, match=r"no Ready condition yet.*no status yet.*Nothing served before"):
        deploy(spec(), api=api, tracking_uri=registry.uri, timeout_s=0.2, poll_s=0.02)
    assert [w.method for w in fake.writes()] == ["POST"]


def test_a_standard_canary_that_never_gets_ready_times_out(registry, fake, api):
    stable_object(fake, "standard")
    fake.statuses.extend([standard_status(1), standard_status(2, [("v4", False, 10)], ready=False)])
    with pytest.raises(ReadyTimeout, match=r"canary v4 is not ready.*canary v4 not ready at 10%.*version 2 \(s3://"):
        deploy(spec(mode="standard", version="4"), api=api, tracking_uri=registry.uri, timeout_s=0.2, poll_s=0.02)
    assert [w.method for w in fake.writes()] == ["PATCH"]


# ------------------------------------------------------------------------------------------------ traffic
def _rv(fake: FakeKube) -> str:
    return fake.stored(NS, MODEL)["metadata"]["resourceVersion"]


def test_knative_set_percent_then_promote(fake, api):
    canary_object(fake)
    rv = _rv(fake)
    fake.statuses.extend([knative_canary(), knative_canary(2), knative_canary(3, 50)])
    moved = traffic.set_canary_percent(api, NS, MODEL, 50, **FAST)
    assert fake.calls() == [("GET", PATH), ("PATCH", PATH), ("GET", PATH), ("GET", PATH)]
    assert (moved.operation, moved.state.canary_percent, moved.status) == ("set-percent", 50, knative_canary(3, 50))

    rv_after = _rv(fake)
    fake.statuses.clear()
    fake.statuses.extend([knative_canary(3, 50), knative_canary(3, 50), knative_stable(4, 2)])
    promoted = traffic.promote_canary(api, NS, MODEL, **FAST)
    set_50 = {"metadata": {"resourceVersion": rv}, "spec": {"predictor": {"canaryTrafficPercent": 50}}}
    promote = {
        "metadata": {
            "resourceVersion": rv_after,
            "labels": {LABEL_VERSION: "4", LABEL_CANARY_VERSION: None},
            "annotations": {ANNOTATION_STABLE_URI: S3[4], ANNOTATION_STABLE_PREDICTOR: None},
        },
        "spec": {"predictor": {"canaryTrafficPercent": None}},
    }
    assert_writes(fake, [("PATCH", PATH, set_50), ("PATCH", PATH, promote)])
    assert fake.calls()[4:] == [("GET", PATH), ("PATCH", PATH), ("GET", PATH), ("GET", PATH)]
    stored = assert_valid_stored(fake)
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert stored["metadata"]["labels"][LABEL_VERSION] == "4"
    assert LABEL_CANARY_VERSION not in stored["metadata"]["labels"]
    assert ANNOTATION_STABLE_PREDICTOR not in stored["metadata"]["annotations"]
    assert promoted.state.describe() == f"version 4 ({S3[4]}) takes all traffic"
    assert promoted.status == knative_stable(4, 2) and schema_errors(promoted.manifest) == []


def test_knative_rollback_writes_the_stable_predictor_back_as_latest(fake, api):
    # The canary asked for more CPU and a GPU: rollback restores the stable predictor's fields, not just its URI.
    canary_object(fake, cpu_request="2", cpu_limit="2", gpus=1)
    rv = _rv(fake)
    rolling = [(rev(2), 0, True), (rev(1), 100, False)]
    starting = knative_status(3, rolling, rev(3), rev(2), rolled_out=rev(1))
    restored_latest = knative_status(3, [(rev(3), 0, True), (rev(1), 100, False)], rev(3), rev(3), rolled_out=rev(1))
    fake.statuses.extend([knative_canary(), starting, restored_latest, restored_latest, knative_stable(4, 3)])
    result = traffic.rollback(api, NS, MODEL, **FAST)

    first = {
        "metadata": {
            "resourceVersion": rv,
            "labels": {LABEL_VERSION: "2", LABEL_CANARY_VERSION: None},
            "annotations": {ANNOTATION_STABLE_URI: S3[2], ANNOTATION_STABLE_PREDICTOR: None},
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "serviceAccountName": "kfops-model-reader",
                "labels": {LABEL_VERSION: "2"},
                "model": model_block(
                    S3[2],
                    {
                        "requests": {"cpu": "1", "memory": "1Gi"},
                        "limits": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": None},
                    },
                ),
                "canaryTrafficPercent": 0,
            }
        },
    }
    second = {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    assert (
        fake.calls()
        == [("GET", PATH), ("PATCH", PATH), ("GET", PATH), ("GET", PATH), ("PATCH", PATH)] + [("GET", PATH)] * 2
    )
    assert_writes(fake, [("PATCH", PATH, first), ("PATCH", PATH, second)])
    stored = assert_valid_stored(fake)
    assert stored["spec"]["predictor"] == predictor("2", S3[2])
    assert stored["metadata"]["labels"][LABEL_VERSION] == "2"
    assert (result.operation, result.writes, result.state.stable_version, result.state.has_canary) == (
        "rollback",
        2,
        "2",
        False,
    )


def test_knative_rollback_to_an_explicit_stable_model(fake, api):
    stable_object(fake, version="4")  # v4 replaced v2 without a canary; put v2 back
    fake.statuses.extend(
        [knative_stable(), knative_status(2, [(rev(2), 0, True), (rev(1), 100, False)], rev(2), rev(2))]
    )
    fake.statuses.append(knative_stable(3, 2))
    traffic.rollback(api, NS, MODEL, stable_storage_uri=S3[2], stable_version="2", **FAST)
    first, second = (w.body for w in fake.writes())
    assert first["spec"]["predictor"]["model"]["storageUri"] == S3[2]
    assert first["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert first["metadata"]["labels"] == {LABEL_VERSION: "2", LABEL_CANARY_VERSION: None}
    assert second == {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    assert serving_state(assert_valid_stored(fake)).stable_storage_uri == S3[2]


def test_standard_set_percent_then_promote(fake, api):
    canary_object(fake, "standard")
    rv = _rv(fake)
    fake.statuses.extend([standard_status(2, [("v4", True, 10)])] * 2 + [standard_status(3, [("v4", True, 30)])])
    traffic.set_canary_percent(api, NS, MODEL, 30, **FAST)
    canary = {"trafficPercent": 30, "predictor": {"name": "v4"} | predictor("4", S3[4])}
    assert_writes(fake, [("PATCH", PATH, {"metadata": {"resourceVersion": rv}, "spec": {"canary": [canary]}})])

    # promote: the canary's predictor, name included, becomes spec.predictor; spec.canary goes
    rv = _rv(fake)
    fake.statuses.clear()
    fake.statuses.extend([standard_status(3, [("v4", True, 30)]), standard_status(3, [("v4", True, 30)])])
    fake.statuses.append(standard_status(4))
    promoted = traffic.promote_canary(api, NS, MODEL, **FAST)
    promote = {
        "metadata": {
            "resourceVersion": rv,
            "labels": {LABEL_VERSION: "4", LABEL_CANARY_VERSION: None},
            "annotations": {ANNOTATION_STABLE_URI: S3[4]},
        },
        "spec": {"predictor": {"name": "v4"} | predictor("4", S3[4]), "canary": None},
    }
    assert fake.writes()[-1].body == promote
    stored = assert_valid_stored(fake)
    assert "canary" not in stored["spec"] and stored["spec"]["predictor"] == {"name": "v4"} | predictor("4", S3[4])
    assert promoted.state.describe() == f"version 4 ({S3[4]}) takes all traffic"


def test_standard_rollback_removes_the_canary(fake, api):
    live = canary_object(fake, "standard")
    fake.statuses.extend([standard_status(2, [("v4", True, 10)]), standard_status(2, [("v4", True, 10)])])
    fake.statuses.append(standard_status(3))
    result = traffic.rollback(api, NS, MODEL, **FAST)
    rollback = {
        "metadata": {
            "resourceVersion": live["metadata"]["resourceVersion"],
            "labels": {LABEL_VERSION: "2", LABEL_CANARY_VERSION: None},
            "annotations": {ANNOTATION_STABLE_URI: S3[2]},
        },
        "spec": {"canary": None},
    }
    assert fake.calls() == [("GET", PATH), ("PATCH", PATH), ("GET", PATH), ("GET", PATH)]
    assert_writes(fake, [("PATCH", PATH, rollback)])
    stored = assert_valid_stored(fake)
    assert "canary" not in stored["spec"] and stored["spec"]["predictor"] == predictor("2", S3[2])
    assert result.state.describe() == f"version 2 ({S3[2]}) takes all traffic"


def test_traffic_operations_need_a_canary_and_an_object(fake, api):
    stable_object(fake)
    fake.statuses.append(knative_stable())
    for operation in (
        lambda: traffic.promote_canary(api, NS, MODEL, **FAST),
        lambda: traffic.set_canary_percent(api, NS, MODEL, 20, **FAST),
        lambda: traffic.rollback(api, NS, MODEL, **FAST),
    ):
        with pytest.raises(KfopsError, match=r"has no canary to .*version 2 .* takes all traffic"):
            operation()
    with pytest.raises(KfopsError, match="InferenceService models/other does not exist"):
        traffic.promote_canary(api, NS, "other", **FAST)
    with pytest.raises(KfopsError, match="canary percent must be an integer from 0 to 100, got 120"):
        traffic.set_canary_percent(api, NS, MODEL, 120, **FAST)
    assert fake.writes() == []


def test_a_promote_that_never_shows_times_out_without_another_write(fake, api):
    canary_object(fake)
    fake.statuses.extend([knative_canary(), knative_canary(2)])  # KServe never moves the split
    with pytest.raises(ReadyTimeout, match=r"at 100% of traffic within 0.2 s: .*the status is for generation 2, the"):
        traffic.promote_canary(api, NS, MODEL, timeout_s=0.2, poll_s=0.02)
    assert [w.method for w in fake.writes()] == ["PATCH"]


def test_a_knative_canary_at_100_percent_is_still_a_canary_until_promoted():
    live = build_inferenceservice(spec(), "2", S3[2])
    canary = merge_patch(live, plan_deploy(spec(version="4"), "4", S3[4], live).write.body)
    at_100 = merge_patch(canary, percent_write(canary, 100).body)
    assert at_100["spec"]["predictor"]["canaryTrafficPercent"] == 100
    state = serving_state(at_100)
    assert (state.canary_version, state.canary_percent, state.stable_version) == ("4", 100, "2")
    promoted = merge_patch(at_100, promote_write(at_100).body)
    assert serving_state(promoted).describe() == f"version 4 ({S3[4]}) takes all traffic"
    # A bare canaryTrafficPercent: 100 that kfops did not start is no canary.
    foreign = merge_patch(live, {"spec": {"predictor": {"canaryTrafficPercent": 100}}})
    assert not serving_state(foreign).has_canary


# ------------------------------------------------------------------------------------------------ API errors
def test_api_errors_say_what_to_fix(registry, fake, api):
    forbidden = (
        'inferenceservices.serving.kserve.io is forbidden: User "system:serviceaccount:kubeflow:pipeline-runner" '
        'cannot create resource "inferenceservices" in API group "serving.kserve.io" in the namespace "models"'
    )
    fake.fail("POST", 403, "Forbidden", forbidden)
    with pytest.raises(KubeError, match=r"create InferenceService models/fraud-detector: forbidden: .*RoleBinding"):
        deploy(spec(), api=api, tracking_uri=registry.uri, **FAST)
    fake.fail("GET", 401, "Unauthorized", "Unauthorized")
    with pytest.raises(KubeError, match="unauthorized: the API server rejected the credentials") as caught:
        deploy(spec(), api=api, tracking_uri=registry.uri, **FAST)
    assert caught.value.status == 401
    fake.fail("GET", 404, "NotFound", "the server could not find the requested resource")
    with pytest.raises(KubeError, match=r"not found: .*Is KServe installed"):
        deploy(spec(), api=api, tracking_uri=registry.uri, **FAST)
    assert fake.calls() == [("GET", PATH), *DISCOVERY, ("POST", COLLECTION), ("GET", PATH), ("GET", PATH)]
    assert fake.objects == {}


def test_a_concurrent_change_between_read_and_write_is_a_conflict(registry, fake, api):
    stable_object(fake)

    def another_writer(obj):
        # Someone else writes the object after deploy read it: its resourceVersion moves on.
        fake.objects[(NS, MODEL)]["metadata"]["resourceVersion"] = "99999"
        return knative_stable()

    fake.statuses.append(another_writer)
    with pytest.raises(
        KubeError, match=r"patch InferenceService models/fraud-detector: conflict: .*run again"
    ) as caught:
        deploy(spec(version="4"), api=api, tracking_uri=registry.uri, **FAST)
    assert caught.value.status == 409
    assert fake.stored(NS, MODEL)["spec"]["predictor"]["model"]["storageUri"] == S3[2]


def test_an_invalid_object_is_refused_with_its_field(fake, api):
    bad = build_inferenceservice(spec(), "2", S3[2])
    bad["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(KubeError, match=r"invalid: .*spec\.predictor\.minReplicas: 'one' is not of type 'integer'"):
        api.create(NS, bad)


def test_an_unreachable_api_server_is_named():
    api = connect(host=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        KubeError, match=r"read InferenceService models/x: cannot reach the Kubernetes API at http://127"
    ):
        api.get(NS, "x")


# ------------------------------------------------------------------------------------------------ CLI, component
def _kubeconfig(tmp_path: Path, fake: FakeKube, monkeypatch) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "deployer", "user": {"token": "test-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "deployer", "namespace": NS}}],
        "current-context": "fake",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_cli_dry_run_writes_the_champions_inferenceservice(registry, fake, tmp_path, capsys):
    from kfops.cli import main

    out = tmp_path / "isvc.yaml"
    argv = ["deploy", "--dry-run", "--output", str(out), "--tracking-uri", registry.uri, "--namespace", NS]
    assert main(argv) == 0
    written = yaml.safe_load(out.read_text())
    assert schema_errors(written) == []
    assert written == build_inferenceservice(spec(), "2", S3[2])
    assert "written to" in capsys.readouterr().out

    as_json = tmp_path / "isvc.json"
    argv = ["deploy", "--dry-run", "--output", str(as_json), "--tracking-uri", registry.uri, "--mode", "standard"]
    assert main([*argv, "--model", "fraud-detector@challenger", "--gpus", "1", "--image", "reg.example/serve:1"]) == 0
    written = json.loads(as_json.read_text())
    assert schema_errors(written) == [] and "namespace" not in written["metadata"]
    assert written["spec"]["predictor"]["model"]["storageUri"] == S3[4]
    assert written["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert fake.requests == []


def test_cli_dry_run_of_a_local_model_warns_and_of_an_unblessed_one_refuses(registry, tmp_path, capsys):
    from kfops.cli import main

    out = tmp_path / "isvc.yaml"
    base = ["deploy", "--dry-run", "--output", str(out), "--tracking-uri", registry.uri]
    assert main([*base, "--model", "fraud-detector/1"]) == 0
    assert "a local path a cluster cannot read" in capsys.readouterr().out
    assert yaml.safe_load(out.read_text())["spec"]["predictor"]["model"]["storageUri"] == registry.local_path
    out.unlink()
    assert main([*base, "--model", "fraud-detector/3"]) == 2
    assert "kfops deploy: model fraud-detector version 3 is not blessed" in capsys.readouterr().err
    assert not out.exists()


def test_cli_applies_through_the_kubeconfig(registry, fake, tmp_path, monkeypatch):
    from kfops.cli import main

    _kubeconfig(tmp_path, fake, monkeypatch)
    fake.statuses.extend([None, knative_stable()])
    out = tmp_path / "applied.yaml"
    argv = ["deploy", "--tracking-uri", registry.uri, "--poll-seconds", "0.01", "--timeout", "5", "--output", str(out)]
    assert main(argv) == 0
    assert fake.calls() == [("GET", PATH), *DISCOVERY, ("POST", COLLECTION), ("GET", PATH), ("GET", PATH)]
    assert {r.authorization for r in fake.requests} == {"Bearer test-token"}
    applied = yaml.safe_load(out.read_text())
    assert schema_errors(applied) == [] and applied["metadata"]["namespace"] == NS


def test_component_starts_a_canary_and_writes_its_outputs(registry, fake, tmp_path, monkeypatch):
    from kfp import dsl

    from kfops.components.deploy.component import deploy_op

    _kubeconfig(tmp_path, fake, monkeypatch)
    stable_object(fake)
    fake.statuses.extend([knative_stable(), knative_canary(2, 20)])
    manifest = dsl.Artifact(name="manifest", uri=str(tmp_path / "manifest"), metadata={})
    status = dsl.Artifact(name="status", uri=str(tmp_path / "status"), metadata={})
    outputs = deploy_op.python_func(
        model_name=MODEL,
        manifest=manifest,
        status=status,
        version="challenger",
        canary_percent=20,
        mlflow_tracking_uri=registry.uri,
        timeout_seconds=5,
        poll_seconds=0.01,
    )
    assert (outputs.operation, outputs.deployed_version, outputs.storage_uri) == ("canary", "4", S3[4])
    assert (outputs.stable_version, outputs.stable_storage_uri) == ("2", S3[2])
    assert outputs.url == f"http://{MODEL}.{NS}.example.com"
    applied = yaml.safe_load(Path(manifest.path).read_text())
    assert schema_errors(applied) == [] and applied["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert json.loads(Path(status.path).read_text()) == knative_canary(2, 20)
    assert manifest.metadata == {"inferenceservice": f"{NS}/{MODEL}", "model": MODEL, "version": "4"}
    assert [w.method for w in fake.writes()] == ["PATCH"]
