"""deploy, set-percent, promote and rollback against the KServe release lines kfops meets, and both names of the
deployment modes (fake_kube.py's ``KServeRelease``: the CRD each line has, how its controller records the mode and
how its webhook checks an update, as KServe's ``validateDeploymentMode`` does).

Objects come in three kinds: created by kfops on that release, created earlier with the old names
(``Serverless``/``RawDeployment``) and recorded by the upgraded controller in the new ones, and recorded in the old
names still. Each test asserts the exact requests sent (discovery reads, dry runs, writes and the mode name each
write carries) and that the fake accepted them; the negative controls show that the same writes without the
mode name are refused there, so the acceptance is not the fake's leniency.
"""

from __future__ import annotations

import pytest

from kfops.components.contracts import TAG_BLESSED, KfopsError
from kfops.components.contracts.delivery import DeploySpec
from kfops.components.deploy.logic import deploy
from kfops.components.isvc import traffic
from kfops.components.isvc.capabilities import capabilities_from_openapi, discover
from kfops.components.isvc.spec import build_inferenceservice
from kfops.components.kube import KubeError, connect
from tests.components.fake_kube import (
    KSERVE_0_15,
    KSERVE_0_16,
    KSERVE_0_20,
    MODE_ANNOTATION,
    FakeKube,
    KServeRelease,
    isvc_path,
    knative_status,
    openapi_document,
    standard_status,
)
from tests.crd_schemas import schema_errors

MODEL = "fraud-detector"
NS = "models"
PATH = isvc_path(NS, MODEL)
COLLECTION = isvc_path(NS)
S3 = {v: f"s3://mlflow/1/models/m-{v:04d}/artifacts" for v in (1, 2)}
DISCOVERY = [("GET", "/openapi/v3"), ("GET", "/openapi/v3/apis/serving.kserve.io/v1beta1")]
FAST = {"timeout_s": 5.0, "poll_s": 0.01}
WRITE_QUERY = {"fieldManager": "kfops", "fieldValidation": "Strict"}
DRY_RUN_QUERY = {"dryRun": "All"} | WRITE_QUERY


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """A real sqlite MLflow registry: fraud-detector 1 and 2, blessed, stored as a server with s3:// records them."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('kserve-versions') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.create_registered_model(MODEL)
    for number, source in S3.items():
        assert client.create_model_version(MODEL, source).version == number
        client.set_model_version_tag(MODEL, str(number), TAG_BLESSED, "true")
    return uri


def start(release: KServeRelease) -> FakeKube:
    fake = FakeKube(kserve=release).start()

    def controller(obj: dict) -> dict:
        """KServe's status for the stored spec, every revision and canary ready, in the recorded mode."""
        generation = obj["metadata"]["generation"]
        recorded = fake.recorded[(NS, MODEL)]
        predictor = obj["spec"]["predictor"]
        if release.parse_mode(recorded) == "Knative":
            latest = f"{MODEL}-predictor-{generation:05d}"
            percent = predictor.get("canaryTrafficPercent")
            if percent is None:
                return knative_status(generation, [(latest, 100, True)], latest, latest)
            stable = f"{MODEL}-predictor-00001"
            return knative_status(generation, [(latest, percent, True), (stable, 100 - percent, False)], latest, latest)
        canaries = [(c["predictor"]["name"], True, c["trafficPercent"]) for c in obj["spec"].get("canary") or []]
        return standard_status(generation, canaries)

    fake.statuses.append(controller)
    return fake


@pytest.fixture
def servers():
    started: list[FakeKube] = []
    yield started
    for fake in started:
        fake.stop()


def spec(mode: str, **changes) -> DeploySpec:
    return DeploySpec(MODEL, namespace=NS, mode=mode, **changes)


def old_object(fake: FakeKube, mode: str, recorded_mode: str | None = None) -> None:
    """Version 1 as created with the old mode names (by an older KServe's users, or an older kfops)."""
    fake.put(build_inferenceservice(spec(mode), "1", S3[1], legacy_mode_names=True), recorded_mode=recorded_mode)


def annotation(fake: FakeKube) -> str:
    return fake.stored(NS, MODEL)["metadata"]["annotations"][MODE_ANNOTATION]


def sent(fake: FakeKube) -> list[tuple]:
    """Every request: (method, path), writes with their query and the mode name they set ("-": none)."""
    out = []
    for request in fake.requests:
        if request.method == "GET":
            out.append((request.method, request.path))
            continue
        annotations = (request.body.get("metadata") or {}).get("annotations") or {}
        query = "dry-run" if request.query == DRY_RUN_QUERY else ("write" if request.query == WRITE_QUERY else "?")
        out.append((request.method, request.path, query, annotations.get(MODE_ANNOTATION, "-")))
    return out


def canary_then(fake: FakeKube, registry: str, mode: str, finish: str) -> None:
    """Deploy version 2 as a canary at 10%, move it to 50%, then promote or roll it back; each step shown."""
    api = connect(host=fake.url)
    result = deploy(spec(mode, version="2", canary_percent=10), api=api, tracking_uri=registry, **FAST)
    assert (result.operation, result.stable_version) == ("canary", "1")
    assert traffic.set_canary_percent(api, NS, MODEL, 50, **FAST).state.canary_percent == 50
    if finish == "promote":
        state = traffic.promote_canary(api, NS, MODEL, **FAST).state
        assert state.describe() == f"version 2 ({S3[2]}) takes all traffic"
    else:
        state = traffic.rollback(api, NS, MODEL, **FAST).state
        assert state.describe() == f"version 1 ({S3[1]}) takes all traffic"
    assert schema_errors(fake.stored(NS, MODEL) | {"metadata": {"name": MODEL}}) == []


# ------------------------------------------------------------------------------------------------ discovery
@pytest.mark.parametrize(
    ("release", "canary_list", "new_names"),
    [(KSERVE_0_15, False, None), (KSERVE_0_16, False, None), (KSERVE_0_20, True, True)],
)
def test_discovery_reads_the_canary_field_and_what_it_implies_for_the_mode_names(release, canary_list, new_names):
    found = capabilities_from_openapi(openapi_document(release))
    assert (found.canary_list, found.records_mode, found.new_mode_names) == (canary_list, True, new_names)


def test_discovery_errors_name_the_missing_part(servers):
    fake = start(KSERVE_0_20)
    servers.append(fake)
    api = connect(host=fake.url)
    assert discover(api).canary_list
    assert fake.calls() == DISCOVERY
    assert fake.requests[1].query == {"hash": fake.requests[1].query["hash"]} and fake.requests[1].query["hash"]
    fake.fail("GET", 403, "Forbidden", 'forbidden: User "x" cannot get path "/openapi/v3"')
    with pytest.raises(KubeError, match=r"read /openapi/v3: forbidden: .*system:discovery ClusterRole"):
        discover(api)
    fake.fail("GET", 404, "NotFound", "the server could not find the requested resource")
    with pytest.raises(KubeError, match=r"read /openapi/v3: not found: .*Kubernetes >= 1.27 serves /openapi/v3"):
        discover(api)
    document = openapi_document(KSERVE_0_20)
    document["components"]["schemas"].pop("io.kserve.serving.v1beta1.InferenceService")
    with pytest.raises(KfopsError, match="has no InferenceService schema: is KServe's InferenceService CRD installed"):
        capabilities_from_openapi(document)


# ------------------------------------------------------------------------------------------------ KServe >= 0.20
@pytest.mark.parametrize("finish", ["promote", "rollback"])
@pytest.mark.parametrize(
    ("mode", "old", "new"), [("knative", "Serverless", "Knative"), ("standard", "RawDeployment", "Standard")]
)
def test_an_object_with_the_old_names_upgraded_to_0_20_gets_the_new_name_with_the_canary(
    registry, servers, mode, old, new, finish
):
    fake = start(KSERVE_0_20)
    servers.append(fake)
    old_object(fake, mode)  # the upgraded controller recorded the new name (kserve#4798's situation)
    assert (annotation(fake), fake.recorded[(NS, MODEL)]) == (old, new)
    canary_then(fake, registry, mode, finish)
    # The canary patch carries the recorded name; the later writes find it there already.
    writes = [r for r in sent(fake) if r[0] != "GET"]
    assert writes[0] == ("PATCH", PATH, "write", new)
    assert {w[2:] for w in writes[1:]} == {("write", "-")}
    assert annotation(fake) == new
    assert ("GET", "/openapi/v3") not in sent(fake)[len(DISCOVERY) + 1 :]  # no discovery after deploy's


def test_a_record_still_in_the_old_name_takes_the_new_one_on_0_20(registry, servers):
    fake = start(KSERVE_0_20)
    servers.append(fake)
    old_object(fake, "knative", recorded_mode="Serverless")  # recorded before the upgrade
    canary_then(fake, registry, "knative", "promote")
    assert next(r for r in sent(fake) if r[0] != "GET") == ("PATCH", PATH, "write", "Knative")


def test_the_same_writes_without_the_mode_name_are_refused_there(servers):
    """Negative control: KServe >= 0.16 refuses any update of a legacy annotation once the record is normalised
    (kserve#4798, #5885), and 0.20 a spec.canary without the annotation Standard."""
    fake = start(KSERVE_0_20)
    servers.append(fake)
    old_object(fake, "knative")
    api = connect(host=fake.url)
    with pytest.raises(
        KubeError,
        match=r"refused: admission webhook .* update rejected: deploymentMode cannot be changed from "
        r"'Knative' to 'Serverless'",
    ):
        api.patch(NS, MODEL, {"spec": {"predictor": {"canaryTrafficPercent": 10}}})
    assert (
        annotation(fake) == "Serverless" and "canaryTrafficPercent" not in fake.stored(NS, MODEL)["spec"]["predictor"]
    )


# ------------------------------------------------------------------------------------------------ KServe 0.16-0.19
def test_0_16_creates_with_the_old_names_then_writes_the_recorded_new_one(registry, servers):
    fake = start(KSERVE_0_16)
    servers.append(fake)
    api = connect(host=fake.url)
    deploy(spec("knative", version="1"), api=api, tracking_uri=registry, **FAST)
    assert (annotation(fake), fake.recorded[(NS, MODEL)]) == ("Serverless", "Knative")
    canary_then(fake, registry, "knative", "rollback")
    assert sent(fake) == [
        ("GET", PATH),
        *DISCOVERY,
        ("POST", COLLECTION, "write", "Serverless"),  # no spec.canary: 0.15 cannot be ruled out
        ("GET", PATH),
        ("GET", PATH),
        *DISCOVERY,
        ("PATCH", PATH, "write", "Knative"),  # the record is in the new names: no dry run needed
        ("GET", PATH),
        ("GET", PATH),
        ("PATCH", PATH, "write", "-"),
        ("GET", PATH),
        ("GET", PATH),
        ("PATCH", PATH, "write", "-"),  # rollback: the stable predictor back, canaryTrafficPercent 0
        ("GET", PATH),
        ("PATCH", PATH, "write", "-"),  # then the field removed
        ("GET", PATH),
    ]


def test_0_16_with_a_record_in_the_old_name_asks_a_dry_run(registry, servers):
    fake = start(KSERVE_0_16)
    servers.append(fake)
    old_object(fake, "knative", recorded_mode="Serverless")
    canary_then(fake, registry, "knative", "promote")
    assert sent(fake)[:6] == [
        ("GET", PATH),
        *DISCOVERY,
        ("PATCH", PATH, "dry-run", "Knative"),  # accepted: this KServe compares with the new name
        ("PATCH", PATH, "write", "Knative"),
        ("GET", PATH),
    ]
    # three writes changed the spec (canary, 50%, promote); the dry run stored nothing
    assert annotation(fake) == "Knative" and fake.objects[(NS, MODEL)]["metadata"]["generation"] == 4


def test_the_legacy_annotation_is_refused_on_0_16_without_the_new_name(servers):
    fake = start(KSERVE_0_16)
    servers.append(fake)
    old_object(fake, "standard")
    with pytest.raises(KubeError, match=r"cannot be changed from 'Standard' to 'RawDeployment'"):
        connect(host=fake.url).patch(NS, MODEL, {"metadata": {"labels": {"team": "fraud"}}})


# ------------------------------------------------------------------------------------------------ KServe 0.15
def test_0_15_keeps_the_old_names_after_a_dry_run_refuses_the_new_one(registry, servers):
    fake = start(KSERVE_0_15)
    servers.append(fake)
    api = connect(host=fake.url)
    deploy(spec("knative", version="1"), api=api, tracking_uri=registry, **FAST)
    assert (annotation(fake), fake.recorded[(NS, MODEL)]) == ("Serverless", "Serverless")
    canary_then(fake, registry, "knative", "promote")
    operation = [*DISCOVERY, ("PATCH", PATH, "dry-run", "Knative")]  # refused: 0.15 keeps Serverless
    assert sent(fake)[5:] == [
        ("GET", PATH),
        *operation,
        ("PATCH", PATH, "write", "-"),  # the canary
        ("GET", PATH),
        ("GET", PATH),
        *operation,
        ("PATCH", PATH, "write", "-"),  # 50%
        ("GET", PATH),
        ("GET", PATH),
        *operation,
        ("PATCH", PATH, "write", "-"),  # promote
        ("GET", PATH),
    ]
    assert annotation(fake) == "Serverless"


def test_0_15_object_that_an_older_kfops_created_as_knative_gets_the_recorded_name_back(registry, servers):
    """0.15 did not know "Knative": it ran the object in its default mode and recorded "Serverless", then refused
    every update (the issue). The canary patch writes the recorded name, and the rollout goes on."""
    fake = start(KSERVE_0_15)
    servers.append(fake)
    fake.put(build_inferenceservice(spec("knative"), "1", S3[1]))
    assert (annotation(fake), fake.recorded[(NS, MODEL)]) == ("Knative", "Serverless")
    with pytest.raises(KubeError, match=r"cannot be changed from 'Serverless' to 'Knative'"):
        connect(host=fake.url).patch(NS, MODEL, {"spec": {"predictor": {"canaryTrafficPercent": 10}}})
    canary_then(fake, registry, "knative", "rollback")
    writes = [r for r in sent(fake) if r[0] == "PATCH"]
    assert writes[:3] == [
        ("PATCH", PATH, "write", "-"),  # the negative control above, refused
        ("PATCH", PATH, "dry-run", "Knative"),
        ("PATCH", PATH, "write", "Serverless"),
    ]
    assert annotation(fake) == "Serverless"


@pytest.mark.parametrize("release", [KSERVE_0_15, KSERVE_0_16])
def test_a_standard_canary_before_0_20_is_refused_naming_the_version(registry, servers, release):
    fake = start(release)
    servers.append(fake)
    api = connect(host=fake.url)
    deploy(spec("standard", version="1"), api=api, tracking_uri=registry, **FAST)
    assert annotation(fake) == "RawDeployment"
    before = len(fake.requests)
    with pytest.raises(KfopsError, match=r"^KServe on this cluster has no spec.canary \(needs KServe >= 0.20\): "):
        deploy(spec("standard", version="2", canary_percent=10), api=api, tracking_uri=registry, **FAST)
    assert sent(fake)[before:] == [("GET", PATH), *DISCOVERY]  # refused before any write
    # Replacing the model at once needs no spec.canary.
    result = deploy(spec("standard", version="2", canary_percent=100), api=api, tracking_uri=registry, **FAST)
    assert result.operation == "replace" and fake.stored(NS, MODEL)["spec"]["predictor"]["model"]["storageUri"] == S3[2]
    assert "canary" not in fake.stored(NS, MODEL)["spec"]
