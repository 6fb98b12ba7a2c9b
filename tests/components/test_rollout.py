"""The progressive canary end to end, with real parts: two `kfops serve` predictors (stable and canary versions of one
registered model in a real sqlite MLflow registry), a fault-injecting proxy in front of the canary, a real
Prometheus, and the fake Kubernetes API (tests/components/fake_kube.py: the one part that cannot run here) whose
stored InferenceService decides, request by request, which predictor the load goes to, as Knative's traffic
split would. The test asserts the exact writes the rollout sends, the registry's aliases and tags afterwards, and
what went to MLflow."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from kfops.components.contracts import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_PREVIOUS, TAG_BLESSED, KfopsError
from kfops.components.contracts.delivery import CanaryThresholds, DeploySpec
from kfops.components.isvc.patches import plan_deploy
from kfops.components.isvc.spec import ANNOTATION_STABLE_URI, build_inferenceservice
from kfops.components.kube import connect
from kfops.components.rollout.logic import (
    PROMOTED,
    ROLLED_BACK,
    TAG_ROLLOUT_STATUS,
    RolloutAborted,
    RolloutPlan,
    run_rollout,
)
from tests.components.canary_env import (
    SERVED_NAME,
    FaultProxy,
    Predictor,
    PrometheusServer,
    need_prometheus,
    prometheus_binary,
)
from tests.components.fake_kube import MERGE_PATCH, FakeKube, isvc_path, knative_status, merge_patch
from tests.conftest import free_port
from tests.serving.conftest import registered_model  # noqa: F401  (the session's tiny real model)
from tests.serving.helpers import v1_objects

MODEL = "fraud-rollout"
NS = "models"
PATH = isvc_path(NS, MODEL)
URI = {"1": "s3://models/fraud-rollout/1", "2": "s3://models/fraud-rollout/2"}
# Small windows and counts: the loop is what is under test; the thresholds' own tests are in test_rollout_analysis.
THRESHOLDS = CanaryThresholds(min_requests=15, p99_slack_seconds=0.1)
FAST = {"window_s": 2.0, "settle_s": 0.0, "traffic_timeout_s": 10.0, "poll_s": 0.02}


def rev(generation: int) -> str:
    return f"{MODEL}-predictor-{generation:05d}"


class KnativeController:
    """What KServe reports in Knative mode for the stored object: the latest spec as revision <generation>, a
    canary split between it and the last revision that took all the traffic."""

    def __init__(self) -> None:
        self.rolled_out = rev(1)

    def __call__(self, obj: dict) -> dict:
        generation = obj["metadata"]["generation"]
        latest = rev(generation)
        percent = obj["spec"]["predictor"].get("canaryTrafficPercent")
        if percent is None:
            self.rolled_out = latest
            return knative_status(generation, [(latest, 100, True)], latest, latest, name=MODEL, namespace=NS)
        split = [(latest, percent, True), (self.rolled_out, 100 - percent, False)]
        return knative_status(generation, split, latest, latest, rolled_out=self.rolled_out, name=MODEL, namespace=NS)


@dataclass
class World:
    tracking_uri: str
    stable: Predictor
    canary: Predictor
    faulty: FaultProxy  # the canary, every 5th request a 500
    prometheus: PrometheusServer | None
    rows: list[dict]


@pytest.fixture(scope="module", autouse=True)
def rollout_artifacts_in_a_temp_folder(tmp_path_factory):
    """The rollout experiment's artifacts under a temp folder: without a root MLflow puts a sqlite store's
    artifacts in ./mlruns, the working directory (the repository, in a test run)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path_factory.mktemp("rollout-artifacts")))
        yield


@pytest.fixture(scope="module")
def world(registered_model, tmp_path_factory):  # noqa: F811
    import mlflow

    m = registered_model
    root = tmp_path_factory.mktemp("rollout")
    client = mlflow.MlflowClient(m.tracking_uri)
    logged = client.get_model_version(m.name, m.version)
    client.create_registered_model(MODEL)
    for _ in range(2):  # the same trained model twice: versions 1 (stable) and 2 (canary)
        version = client.create_model_version(MODEL, logged.source, logged.run_id).version
        client.set_model_version_tag(MODEL, version, TAG_BLESSED, "true")
    stable = Predictor(f"{MODEL}/1", m.tracking_uri, root / "stable.log")
    canary = Predictor(f"{MODEL}/2", m.tracking_uri, root / "canary.log")
    started = [stable, canary]
    try:
        stable.wait_ready()
        canary.wait_ready()
        faulty = FaultProxy(canary.base, "2", error_every=5)
        started.append(faulty)
        binary = prometheus_binary()
        prometheus = None
        if binary:
            targets = {"stable": stable.target, "faulty": faulty.target}
            prometheus = PrometheusServer(binary, root / "prometheus", targets)
            started.append(prometheus)
            prometheus.wait_targets_up(targets)
        yield World(m.tracking_uri, stable, canary, faulty, prometheus, v1_objects(m.rows.head(64)))
    finally:
        for part in reversed(started):
            part.stop()


@pytest.fixture
def registry(world):
    """Aliases as a blessed, registered, not yet promoted version 2 leaves them; tags cleared."""
    import mlflow

    client = mlflow.MlflowClient(world.tracking_uri)
    for alias in (ALIAS_CHAMPION, ALIAS_PREVIOUS, ALIAS_CHALLENGER):
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.delete_registered_model_alias(MODEL, alias)
    client.set_registered_model_alias(MODEL, ALIAS_CHAMPION, "1")
    client.set_registered_model_alias(MODEL, ALIAS_CHALLENGER, "2")
    for version in ("1", "2"):
        if TAG_ROLLOUT_STATUS in client.get_model_version(MODEL, version).tags:
            client.delete_model_version_tag(MODEL, version, TAG_ROLLOUT_STATUS)
    return client


@pytest.fixture
def fake():
    server = FakeKube().start()
    server.statuses.append(KnativeController())
    yield server
    server.stop()


def start_canary(fake: FakeKube) -> None:
    """What `deploy` leaves: version 1 stable, version 2 a Knative canary at 10%."""
    spec = DeploySpec(MODEL, namespace=NS)
    live = fake.put(build_inferenceservice(spec, "1", URI["1"]))
    fake.put(merge_patch(live, plan_deploy(spec, "2", URI["2"], live).write.body), generation=2)


class Traffic:
    """Load that follows the stored InferenceService: the canary's share of requests to the latest spec's model,
    the rest to the stable one, as Knative splits traffic between the two revisions."""

    def __init__(self, fake: FakeKube, bases: dict[str, str], rows: list[dict], threads: int = 2) -> None:
        self.fake, self.bases, self.rows = fake, bases, rows
        self.stop = threading.Event()
        self.sent: dict[str, int] = {}
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _target(self, rng: random.Random) -> str:
        obj = self.fake.objects[(NS, MODEL)]
        predictor = obj["spec"]["predictor"]
        latest = predictor["model"]["storageUri"]
        percent = predictor.get("canaryTrafficPercent")
        if percent is not None and rng.random() >= percent / 100:
            return obj["metadata"]["annotations"][ANNOTATION_STABLE_URI]
        return latest

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as client:
            i = seed
            while not self.stop.is_set():
                uri = self._target(rng)
                row = self.rows[i % len(self.rows)]
                i += 1
                client.post(f"{self.bases[uri]}/v1/models/{SERVED_NAME}:predict", json={"instances": [row]})
                self.sent[uri] = self.sent.get(uri, 0) + 1
                self.stop.wait(0.005)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=35)


def aliases_of(client) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(MODEL).aliases.items()}


def patches(fake: FakeKube) -> list[dict]:
    writes = fake.writes()
    assert all(w.method == "PATCH" and w.path == PATH and w.content_type == MERGE_PATCH for w in writes)
    return [w.body for w in writes]


def percent_of(body: dict):
    return body["spec"]["predictor"].get("canaryTrafficPercent", "absent")


# ------------------------------------------------------------------------------------------------ the loop
def test_a_healthy_canary_advances_step_by_step_and_is_promoted(world, registry, fake):
    import mlflow

    start_canary(fake)
    plan = RolloutPlan(
        NS,
        MODEL,
        MODEL,
        served_name=SERVED_NAME,
        steps=[25, 50, 100],
        thresholds=THRESHOLDS,
        stable_metrics_urls=[world.stable.base],
        canary_metrics_urls=[world.canary.base],
        **FAST,
    )
    bases = {URI["1"]: world.stable.base, URI["2"]: world.canary.base}
    with Traffic(fake, bases, world.rows) as load:
        result = run_rollout(plan, connect(host=fake.url), world.tracking_uri)
    assert result.outcome == PROMOTED, result.report
    assert [a.verdict for a in result.analyses] == ["advance", "advance"]
    assert [a.traffic_percent for a in result.analyses] == [25, 50]
    # Exactly: 25%, 50%, then the promotion (canaryTrafficPercent removed, version 2 the stable model).
    bodies = patches(fake)
    assert [percent_of(b) for b in bodies] == [25, 50, None]
    assert bodies[-1]["metadata"]["labels"]["kfops.io/model-version"] == "2"
    assert "canaryTrafficPercent" not in fake.stored(NS, MODEL)["spec"]["predictor"]
    assert load.sent[URI["2"]] > 0 and load.sent[URI["1"]] > 0
    # The registry follows: champion on version 2, previous on 1, challenger gone; the version is tagged.
    aliases = aliases_of(registry)
    assert (aliases.get(ALIAS_CHAMPION), aliases.get(ALIAS_PREVIOUS), aliases.get(ALIAS_CHALLENGER)) == ("2", "1", None)
    assert registry.get_model_version(MODEL, "2").tags[TAG_ROLLOUT_STATUS] == PROMOTED
    assert result.champion == "2"
    # Every decision with its numbers is in the report and in MLflow.
    assert "step 1: canary version 2 takes 25%" in result.report and "promoted" in result.report
    run = mlflow.MlflowClient(world.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.tags["kfops.rollout.outcome"] == PROMOTED
    # the report is stored under the configured artifact root, not in ./mlruns of whatever the working directory is
    assert run.info.artifact_uri.startswith(os.environ["KFOPS_MLFLOW_ARTIFACT_ROOT"]), run.info.artifact_uri
    history = mlflow.MlflowClient(world.tracking_uri).get_metric_history(result.mlflow_run_id, "canary.requests")
    assert [m.step for m in history] == [1, 2] and all(m.value >= THRESHOLDS.min_requests for m in history)
    report = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/rollout/report.md")
    assert report == result.report


def test_a_canary_answering_5xx_is_rolled_back_within_one_window_by_prometheus(world, registry, fake):
    prometheus = need_prometheus(world.prometheus)
    start_canary(fake)
    # The training pipeline had already made the canary champion: the rollback must undo that too.
    registry.set_registered_model_alias(MODEL, ALIAS_CHAMPION, "2")
    registry.set_registered_model_alias(MODEL, ALIAS_PREVIOUS, "1")
    plan = RolloutPlan(
        NS,
        MODEL,
        MODEL,
        served_name=SERVED_NAME,
        steps=[25, 50, 100],
        thresholds=THRESHOLDS,
        prometheus_url=prometheus.url,
        stable_selector='job="stable"',
        canary_selector='job="faulty"',
        **(FAST | {"window_s": 3.0, "settle_s": 1.5}),
    )
    bases = {URI["1"]: world.stable.base, URI["2"]: world.faulty.base}
    started = time.monotonic()
    with Traffic(fake, bases, world.rows):
        result = run_rollout(plan, connect(host=fake.url), world.tracking_uri)
    elapsed = time.monotonic() - started
    assert result.outcome == ROLLED_BACK, result.report
    assert len(result.analyses) == 1 and result.analyses[0].verdict == "rollback"
    assert any("error rate" in reason for reason in result.analyses[0].reasons), result.analyses[0].reasons
    assert elapsed < plan.window_s + plan.settle_s + 10  # within the first step's window (plus the writes)
    # 25%, then the rollback: stable written back as latest at 0%, then the field removed.
    bodies = patches(fake)
    assert [percent_of(b) for b in bodies] == [25, 0, None]
    assert bodies[1]["spec"]["predictor"]["model"]["storageUri"] == URI["1"]
    stored = fake.stored(NS, MODEL)
    assert stored["spec"]["predictor"]["model"]["storageUri"] == URI["1"]
    assert "kfops.io/canary-version" not in stored["metadata"]["labels"]
    aliases = aliases_of(registry)
    assert (aliases.get(ALIAS_CHAMPION), aliases.get(ALIAS_PREVIOUS), aliases.get(ALIAS_CHALLENGER)) == ("1", "2", None)
    assert registry.get_model_version(MODEL, "2").tags[TAG_ROLLOUT_STATUS] == ROLLED_BACK
    assert result.champion == "1"


def test_a_canary_that_never_gets_enough_traffic_is_rolled_back_after_its_extensions(world, registry, fake):
    start_canary(fake)
    plan = RolloutPlan(
        NS,
        MODEL,
        MODEL,
        served_name=SERVED_NAME,
        steps=[10, 100],
        max_extensions=1,
        thresholds=CanaryThresholds(min_requests=10**6),
        stable_metrics_urls=[world.stable.base],
        canary_metrics_urls=[world.canary.base],
        **(FAST | {"window_s": 0.5}),
    )
    result = run_rollout(plan, connect(host=fake.url), world.tracking_uri)
    assert result.outcome == ROLLED_BACK
    assert "still too few requests after 1 extension(s)" in result.reason
    assert sum("holding it for another" in line for line in result.decisions) == 1
    assert [percent_of(b) for b in patches(fake)] == [10, 0, None]
    # The registry: champion never moved; challenger no longer points at the rolled-back version.
    aliases = aliases_of(registry)
    assert (aliases.get(ALIAS_CHAMPION), aliases.get(ALIAS_CHALLENGER)) == ("1", None)


def test_an_unreachable_prometheus_stops_the_rollout_and_traffic_goes_back_to_stable(world, registry, fake):
    start_canary(fake)
    dead = f"http://127.0.0.1:{free_port()}"
    plan = RolloutPlan(NS, MODEL, MODEL, served_name=SERVED_NAME, prometheus_url=dead, **(FAST | {"window_s": 0.2}))
    with pytest.raises(RolloutAborted, match=rf"stopped: .*{dead}.*traffic is back on stable version 1") as caught:
        run_rollout(plan, connect(host=fake.url), world.tracking_uri)
    assert [percent_of(b) for b in patches(fake)] == [10, 0, None]
    assert fake.stored(NS, MODEL)["spec"]["predictor"]["model"]["storageUri"] == URI["1"]
    assert caught.value.result.outcome == ROLLED_BACK and "no verdict" in caught.value.result.reason
    assert aliases_of(registry).get(ALIAS_CHAMPION) == "1"


# ------------------------------------------------------------------------------------------------ refusals
def test_no_canary_running_is_refused_before_any_write(world, registry, fake):
    fake.put(build_inferenceservice(DeploySpec(MODEL, namespace=NS), "1", URI["1"]))
    plan = RolloutPlan(NS, MODEL, MODEL, stable_metrics_urls=["http://a"], canary_metrics_urls=["http://b"])
    with pytest.raises(KfopsError, match="runs no canary"):
        run_rollout(plan, connect(host=fake.url), world.tracking_uri)
    assert fake.writes() == []


def test_an_unblessed_canary_is_refused_before_any_write(world, registry, fake):
    start_canary(fake)
    registry.set_model_version_tag(MODEL, "2", TAG_BLESSED, "false")
    try:
        plan = RolloutPlan(NS, MODEL, MODEL, stable_metrics_urls=["http://a"], canary_metrics_urls=["http://b"])
        with pytest.raises(KfopsError, match="version 2 is not blessed"):
            run_rollout(plan, connect(host=fake.url), world.tracking_uri)
        assert fake.writes() == []
    finally:
        registry.set_model_version_tag(MODEL, "2", TAG_BLESSED, "true")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": [10, 50]}, "the last step must be 100"),
        ({"steps": [50, 25, 100]}, "steps must increase"),
        ({"steps": [0, 100]}, "outside 1..100"),
        ({"steps": []}, "steps is empty"),
        ({"window_s": 0}, "window_s must be positive"),
        ({"prometheus_url": "http://p:9090"}, "either a Prometheus URL or"),
        ({"stable_metrics_urls": [], "canary_metrics_urls": []}, "either a Prometheus URL or"),
        ({"canary_metrics_urls": []}, "needs URLs for both"),
    ],
)
def test_bad_plans_are_refused_naming_the_field(changes, message):
    base = {"stable_metrics_urls": ["http://a"], "canary_metrics_urls": ["http://b"]}
    plan = RolloutPlan(NS, MODEL, MODEL, **(base | changes))
    with pytest.raises(KfopsError, match=message):
        plan.check()
