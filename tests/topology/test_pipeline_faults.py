"""Faults during a pipeline, injected with the real processes of tests/topology/conftest.py, and what they leave.

- S3 refusing connections for 20 s while ingest writes the data snapshot, and again while register checks the
  model files; the MLflow server killed and started again on the same port and database while training runs
  (all three in the shared run, ``faulted_run``): the run completes after bounded retries, each one logged, and
  nothing is lost or written twice;
- S3 refusing connections for 20 s while training uploads the model: boto3's retries (15 s at most) give up,
  the run stops with an error naming the endpoint, its MLflow run is FAILED, and no version or alias exists;
- PostgreSQL restarted in the middle of a promotion: the MLflow client's retries carry it through, and the
  aliases and the promotion claim end as a promotion without a fault leaves them;
- register when the model files are missing or S3 stays down past the retry budget: it stops naming the reason
  and the endpoint, and the version it created is deleted again, with no alias on it.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from kfops.cli import main
from kfops.components import registry as promotion
from kfops.components import retry, storage
from kfops.components.contracts import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    TAG_BLESSED,
    TAG_METRIC_PREFIX,
    Blessing,
    KfopsError,
)
from tests.topology.helpers import OUTAGE_S, assert_version_complete, run_args, run_log

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_a_run_rides_out_s3_outages_in_ingest_and_register_and_an_mlflow_restart_in_training(
    topology_env, faulted_run, transactions
):
    import mlflow

    proxy, server = topology_env.proxy, topology_env.mlflow
    assert faulted_run.code == 0, faulted_run.output
    restarter = faulted_run.restarter
    assert restarter.error is None, restarter.error
    assert restarter.killed_at and server.starts == faulted_run.server_starts_before + 1, "no restart in training"
    assert len(faulted_run.trips) == 2, (faulted_run.trips, proxy.requests[-30:])

    # Every fault was met by retries, each logged, naming the endpoint it waited for.
    log = run_log(faulted_run.workspace)
    for endpoint in (proxy.endpoint, server.uri):
        assert f"{retry.LOG_PREFIX}: attempt 2 of 5 to {endpoint}" in log, endpoint
    # ingest's step and register's each end with their count (a 20 s outage takes 3 or 4 retries to get through)
    counted = rf"{retry.LOG_PREFIX}: ([34]) retries in this process \({re.escape(proxy.endpoint)}: \1\)"
    assert len(re.findall(counted, log)) == 2, log[-3000:]

    # Nothing lost or written twice: one snapshot, whole; one version, complete, with its aliases.
    from kfops.components.datasets import list_versions, read_snapshot

    result = faulted_run.result
    assert result["data_sha256"] in [v.sha256 for v in list_versions("s3://kfops-store")]
    frame, _ = read_snapshot("s3://kfops-store", result["data_sha256"])
    assert len(frame) == len(transactions)
    client = mlflow.MlflowClient()
    name = result["model_name"]
    found = client.search_model_versions(f"name = '{name}' and run_id = '{result['run_id']}'")
    registered = [v.version for v in found if client.get_model_version(name, v.version).tags.get("kfops.run_id")]
    assert registered == [result["model_version"]]  # (test_cluster_shape adds a version of its own, untagged)
    assert_version_complete(client, name, result["model_version"])
    assert result["aliases"] == sorted([ALIAS_CHALLENGER, ALIAS_CHAMPION])
    # The training step's retries (the server restart) are on its MLflow run, as a metric.
    assert client.get_run(result["run_id"]).data.metrics["client_retries"] >= 1


def test_s3_down_past_botos_retries_during_the_model_upload_stops_the_run_and_registers_nothing(
    topology_env, tmp_path, capsys, transactions
):
    import mlflow

    proxy = topology_env.proxy
    storage.write_bytes("s3://raw/upload.parquet", transactions.to_parquet(index=False))
    proxy.trip_on(r"PUT /mlflow/\S+/models/m-\S+/artifacts/", OUTAGE_S)
    args = run_args(tmp_path, "s3://raw/upload.parquet", "--experiment", "topology-upload", "--model-name", "upload")
    code = main(["run", *args, "--json"])
    out = capsys.readouterr().out
    assert code != 0, out
    assert any(why.startswith("trip") for *_, why in proxy.outages), proxy.requests[-30:]
    assert "error in task 'train': train: uploading the model: the artifact store (S3 endpoint" in out, out
    assert proxy.endpoint in out, out
    assert "nothing was registered" in out

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("topology-upload")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}  # never FINISHED without its model
    assert client.search_registered_models("name = 'upload'") == []
    log = run_log(tmp_path / "ws")
    assert f"{retry.LOG_PREFIX}: a retry (at most 5 attempts) to {proxy.endpoint}" in log  # boto3's, counted


@pytest.fixture
def trained(topology_env, tmp_path, prepared, fast_config):
    """One model trained and logged to the server (artifacts on S3): its MLflow model URI and run id."""
    from tests.conftest import train_prepared

    outcome = train_prepared(
        prepared,
        fast_config,
        str(tmp_path / "model"),
        str(tmp_path / "tb"),
        experiment="topology-registry",
        tracking_uri=topology_env.mlflow.uri,
        data_sha256=prepared["sha256"],
    )
    return outcome.model_uri, outcome.run_id


def blessed(f1: float) -> tuple[Blessing, object]:
    from kfops.components.contracts import EvaluationResult

    evaluation = EvaluationResult(metrics={"f1_macro": f1}, confusion_matrix=[[1, 0], [0, 1]], labels=["0", "1"])
    return Blessing(blessed=True, candidate="test", message="blessed in a test"), evaluation


def test_a_promotion_rides_out_a_postgres_restart(topology_env, trained, monkeypatch, capsys):
    import mlflow

    model_uri, _ = trained
    name = "pg-restart"
    numbers = []
    for f1 in (0.8, 0.9):  # two blessed versions of the one model, the second better
        tags = {TAG_BLESSED: "true", TAG_METRIC_PREFIX + "f1_macro": str(f1)}
        numbers.append(str(mlflow.register_model(model_uri, name, tags=tags).version))
    assert main(["models", "promote", f"{name}/{numbers[0]}", "--json"]) == 0
    capsys.readouterr()

    # PostgreSQL goes down between the promotion's claim and its alias writes, and is back 3 s later.
    postgres = topology_env.postgres
    write = promotion._Promotion.write
    restarted = []

    def write_after_a_restart(self, champion, before, observed):
        if not restarted:
            postgres.stop("fast")
            restarted.append(time.time())
            threading.Timer(3.0, postgres.start).start()
        return write(self, champion, before, observed)

    monkeypatch.setattr(promotion._Promotion, "write", write_after_a_restart)
    retries_before = retry.counts().get(topology_env.mlflow.uri, 0)
    assert main(["models", "promote", f"{name}/{numbers[1]}", "--json"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert restarted
    assert retry.counts().get(topology_env.mlflow.uri, 0) > retries_before  # the 500s were retried, and counted

    model = mlflow.MlflowClient().get_registered_model(name)
    aliases = {k: str(v) for k, v in model.aliases.items()}
    assert aliases == {ALIAS_CHAMPION: numbers[1], ALIAS_PREVIOUS: numbers[0]}
    claims = {k: v for k, v in model.tags.items() if k.startswith(promotion.CLAIM_PREFIX)}
    assert claims and all("/" in v for v in claims.values()), claims  # every claim closed


def test_register_deletes_its_version_when_the_model_files_are_missing_or_s3_stays_down(
    topology_env, trained, monkeypatch
):
    import mlflow

    from kfops.components.register.logic import register_model

    model_uri, run_id = trained
    client = mlflow.MlflowClient()
    location = client.get_logged_model(model_uri.rsplit("/", 1)[-1]).artifact_location
    blessing, evaluation = blessed(0.9)

    # S3 refuses past the retry budget: the check cannot be made, so no alias; the version goes again.
    monkeypatch.setattr(retry, "BUDGET_S", 5.0)  # the policy's shape, with a budget the outage outlasts
    topology_env.proxy.refuse_for(4)
    with pytest.raises(KfopsError) as stopped:
        register_model(model_uri, run_id, "half", evaluation=evaluation, blessing=blessing)
    assert f"cannot reach S3 endpoint {topology_env.proxy.endpoint}" in str(stopped.value)
    assert "was deleted again" in str(stopped.value)
    assert client.search_model_versions("name = 'half'") == []
    while topology_env.proxy.is_refusing():
        time.sleep(0.2)

    # The model files are gone: the version would point at nothing, so it is not kept.
    storage.delete_files([storage.join(location, "MLmodel")])
    with pytest.raises(KfopsError, match=r"holds no model \(no MLmodel file\).*was deleted again"):
        register_model(model_uri, run_id, "half", evaluation=evaluation, blessing=blessing)
    assert client.search_model_versions("name = 'half'") == []
    assert not client.get_registered_model("half").aliases
