from __future__ import annotations

import pytest

from kfops.components.contracts import EvaluationResult, KfopsError
from kfops.components.register.logic import register_model
from tests.conftest import train_prepared


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, prepared, fast_config):
    """Two trained models in one MLflow store: (store URI, [outcome, outcome])."""
    import os

    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "KFOPS_MLFLOW_ARTIFACT_ROOT")}
    os.environ["MLFLOW_TRACKING_URI"], os.environ["KFOPS_MLFLOW_ARTIFACT_ROOT"] = uri, str(root / "art")
    try:
        outcomes = [
            train_prepared(
                prepared,
                fast_config,
                str(root / f"model{i}"),
                str(root / f"tb{i}"),
                experiment="reg",
                data_sha256=prepared["sha256"],
            )
            for i in range(2)
        ]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    mlflow.set_tracking_uri(uri)
    return uri, outcomes


def test_register_tags_aliases_and_reuse(two_models):
    import mlflow

    uri, (first, second) = two_models
    evaluation = EvaluationResult(
        metrics={"accuracy": 0.97, "f1": 0.8}, confusion_matrix=[[1, 0], [0, 1]], labels=["0", "1"]
    )
    out = register_model(
        first.model_uri,
        first.run_id,
        "fraud",
        evaluation=evaluation,
        data_sha256="abc123",
        pipeline_run="run-1",
        tracking_uri=uri,
    )
    client = mlflow.MlflowClient()
    version = client.get_model_version("fraud", out.version)
    assert out.version == "1" and out.aliases == ["challenger"] and not out.reused
    assert version.tags["kfops.data_sha256"] == "abc123" and version.tags["kfops.metric.accuracy"] == "0.97"
    assert version.tags["kfops.pipeline_run"] == "run-1" and "abc123" in version.description
    assert str(client.get_model_version_by_alias("fraud", "challenger").version) == "1"
    assert out.download_uri.endswith("artifacts")
    # The same logged model again (a cached training step) reuses its version.
    again = register_model(first.model_uri, first.run_id, "fraud", tracking_uri=uri)
    assert again.version == "1" and again.reused
    assert len(client.search_model_versions("name = 'fraud'")) == 1
    # A new model becomes the challenger; nobody is champion until promoted.
    newer = register_model(second.model_uri, second.run_id, "fraud", tracking_uri=uri)
    assert newer.version == "2"
    aliases = client.get_registered_model("fraud").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": "2"}


def test_promotion_keeps_the_previous_champion(two_models):
    import mlflow

    uri, (first, second) = two_models
    one = register_model(first.model_uri, first.run_id, "promoted", promote_champion=True, tracking_uri=uri)
    assert one.previous_champion == "" and "champion" in one.aliases
    two = register_model(second.model_uri, second.run_id, "promoted", promote_champion=True, tracking_uri=uri)
    assert two.previous_champion == "1"
    aliases = mlflow.MlflowClient().get_registered_model("promoted").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "2", "previous": "1", "challenger": "2"}


@pytest.mark.parametrize("name", ["", "a/b", "m@champion"])
def test_bad_model_names(two_models, name):
    uri, (first, _) = two_models
    with pytest.raises(KfopsError, match="model name"):
        register_model(first.model_uri, first.run_id, name, tracking_uri=uri)
