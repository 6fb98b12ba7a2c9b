"""`kfops run`'s summary read from a real MLflow store: in the driver, and through a call forked from the task server
(the JSON round trip the driver gets)."""

from __future__ import annotations

import pytest

from kfops.components.contracts import TAG_BLESSED, TAG_BLESSING_MESSAGE
from kfops.components.tracking import set_tracking
from kfops.components.workspace import workspace
from kfops.pipelines import task_server
from kfops.pipelines.local import configure_environment
from kfops.pipelines.run_summary import training_summary


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A run with the tags and metrics train and evaluate write, and its registered version, blessed and champion."""
    import mlflow

    ws = workspace(tmp_path / "ws")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_environment(ws)
    set_tracking(ws.tracking_uri())
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("kfops-training", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment, tags={"kfops.task": "binary", "kfops.device": "cpu"})
    for name, value in (("f1_macro", 0.91), ("accuracy", 0.99), ("not_a_test_metric", 1.0)):
        client.log_metric(run.info.run_id, name, value)
    client.create_registered_model("fraud-detector")
    version = client.create_model_version("fraud-detector", str(tmp_path / "model"), run_id=run.info.run_id)
    client.set_model_version_tag("fraud-detector", version.version, TAG_BLESSED, "true")
    client.set_model_version_tag("fraud-detector", version.version, TAG_BLESSING_MESSAGE, "blessed: 4 check(s) passed")
    client.set_registered_model_alias("fraud-detector", "champion", version.version)
    query = {
        "tracking_uri": ws.tracking_uri(),
        "model_name": "fraud-detector",
        "run_id": run.info.run_id,
        "model_version": version.version,
    }
    return query, experiment


def test_the_summary_reads_the_run_and_the_version(registered):
    query, experiment = registered
    found = training_summary(**query)
    assert found["task"] == "binary" and found["device"] == "cpu" and found["model_family"] == "mlp"
    assert list(found["metrics"]) == ["accuracy", "f1_macro"]  # the task's test metrics, in their order
    assert found["experiment_id"] == experiment and found["version"] == "1"
    assert found["aliases"] == ["champion"]
    assert found["blessed"] is True and found["blessing"] == "blessed: 4 check(s) passed"
    assert found["download_uri"].endswith("model")


def test_a_call_forked_from_the_task_server_answers_the_same(registered):
    query, _ = registered
    server = task_server.TaskServer.start(("kfp.dsl.executor_main", "mlflow"))
    try:
        assert server.accepts(None)
        assert server.call("kfops.pipelines.run_summary:training_summary", query) == training_summary(**query)
    finally:
        server.stop()
