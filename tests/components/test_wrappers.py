"""The KFP wrappers, called through ``python_func`` with artifacts on temporary paths, chained stage to stage."""

from __future__ import annotations

import json

import pytest
from kfp import dsl

from kfops.components.contracts import Blessing
from kfops.components.evaluate.component import evaluate_op
from kfops.components.gate.component import gate_op
from kfops.components.ingest.component import split_data_op, version_data_op
from kfops.components.preprocess.component import preprocess_op
from kfops.components.register.component import promote_op, register_op
from kfops.components.train.component import train_op
from kfops.components.validate.component import validate_data_op


def artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


def test_wrappers_chain_from_raw_file_to_registered_model(tmp_path, data_file, mlflow_store):
    import mlflow

    store = str(tmp_path / "store")
    versioned = version_data_op.python_func(
        data_uri=str(data_file),
        data_version="",
        artifact_store=store,
        target="is_fraud",
        numeric_features=[],
        categorical_features=[],
        drop_columns=["transaction_id", "customer_id"],
        time_column="event_time",
        positive_class="",
        task="auto",
        expectation_suite="",
    )
    assert (
        len(versioned.sha256) == 64
        and versioned.suite_sha256 == ""
        and versioned.rows == 4000
        and versioned.source == str(data_file)
    )
    assert json.loads(versioned.schema_json)["target"] == "is_fraud"

    train, validation, test = (artifact(dsl.Dataset, tmp_path, n) for n in ("train", "validation", "test"))
    split_data_op.python_func(
        data_sha256=versioned.sha256,
        artifact_store=store,
        target="is_fraud",
        validation_fraction=0.15,
        test_fraction=0.15,
        seed=1,
        time_column="event_time",
        split_by_time=True,
        train=train,
        validation=validation,
        test=test,
    )
    assert train.metadata["rows"] + validation.metadata["rows"] + test.metadata["rows"] == 4000
    assert test.metadata["sha256"] == versioned.sha256 and test.metadata["source"] == str(data_file)

    spec = artifact(dsl.Artifact, tmp_path, "feature_spec")
    features = {n: artifact(dsl.Dataset, tmp_path, f"{n}_features") for n in ("train", "validation", "test")}
    preprocess_op.python_func(
        train=train,
        validation=validation,
        test=test,
        schema_json=versioned.schema_json,
        data_sha256=versioned.sha256,
        max_categories=50,
        min_frequency=5,
        feature_spec=spec,
        train_features=features["train"],
        validation_features=features["validation"],
        test_features=features["test"],
    )
    assert spec.metadata["input_width"] == features["train"].metadata["columns"]

    model, tensorboard = artifact(dsl.Model, tmp_path, "model"), artifact(dsl.Artifact, tmp_path, "tb")
    trained = train_op.python_func(
        train_features=features["train"],
        validation_features=features["validation"],
        feature_spec=spec,
        raw_train=train,
        data_sha256=versioned.sha256,
        hidden_sizes=[16.0, 8.0],
        dropout=0.0,
        learning_rate=0.01,
        batch_size=256,
        epochs=3,
        optimizer="adamw",
        weight_decay=0.0,
        class_weighting="none",
        early_stopping_patience=2,
        seed=1,
        device="cpu",
        threshold=0.4,
        threshold_objective="fixed",
        model_family="mlp",
        model_params={},
        model_module="",
        imported_model="",
        experiment="wrappers",
        mlflow_tracking_uri="",
        tensorboard_root="",
        model=model,
        tensorboard=tensorboard,
    )
    assert model.metadata["run_id"] == trained.run_id and trained.model_uri.startswith("models:/")
    assert (tmp_path / "model" / "MLmodel").exists()

    metrics = artifact(dsl.Metrics, tmp_path, "metrics")
    classification = artifact(dsl.ClassificationMetrics, tmp_path, "classification")
    evaluation, png = artifact(dsl.Artifact, tmp_path, "evaluation"), artifact(dsl.Artifact, tmp_path, "cm")
    evaluate_op.python_func(
        model=model,
        test=test,
        mlflow_tracking_uri="",
        metrics=metrics,
        classification_metrics=classification,
        evaluation=evaluation,
        confusion_matrix_png=png,
    )
    assert 0.9 < metrics.metadata["accuracy"] <= 1.0 and "roc_auc" in metrics.metadata
    assert evaluation.metadata["threshold"] == 0.4  # the model's own threshold, which serving also applies
    matrix = classification.metadata["confusionMatrix"]["rows"]
    assert sum(sum(r["row"]) for r in matrix) == test.metadata["rows"]
    run = mlflow.MlflowClient().get_run(trained.run_id)
    assert run.data.metrics["accuracy"] == pytest.approx(metrics.metadata["accuracy"], abs=1e-6)
    assert run.data.tags["kfops.evaluated"] == "true"

    blessing, gate_report = artifact(dsl.Artifact, tmp_path, "blessing"), artifact(dsl.Markdown, tmp_path, "gate")
    judged = gate_op.python_func(
        evaluation=evaluation,
        model=model,
        test=test,
        thresholds='{"accuracy": {"lower": 0.9}}',
        model_name="wrapped",
        mlflow_tracking_uri="",
        blessing=blessing,
        report=gate_report,
    )
    assert judged.blessed and Blessing.from_json((tmp_path / "blessing").read_text()).blessed
    assert (tmp_path / "gate").read_text().startswith("# Blessed")
    client = mlflow.MlflowClient()
    assert client.get_run(trained.run_id).data.tags["kfops.blessed"] == "true"

    registered = register_op.python_func(
        model=model,
        evaluation=evaluation,
        blessing=blessing,
        model_name="wrapped",
        data_sha256=versioned.sha256,
        pipeline_run="local-1",
        mlflow_tracking_uri="",
    )
    assert registered.version == "1"
    version = client.get_model_version("wrapped", "1")
    assert version.tags["kfops.data_sha256"] == versioned.sha256 and version.run_id == trained.run_id
    assert version.tags["kfops.blessed"] == "true"
    assert {k: str(v) for k, v in client.get_registered_model("wrapped").aliases.items()} == {"challenger": "1"}

    promoted = promote_op.python_func(model_name="wrapped", version="1", metric="f1_macro", mlflow_tracking_uri="")
    assert promoted.won and promoted.champion == "1"
    assert str(client.get_model_version_by_alias("wrapped", "champion").version) == "1"

    # The same model judged unblessed (an impossible floor) registers with no alias moved.
    refused = gate_op.python_func(
        evaluation=evaluation,
        model=model,
        test=test,
        thresholds='{"accuracy": {"lower": 0.9999}}',
        model_name="strict",
        mlflow_tracking_uri="",
        blessing=blessing,
        report=gate_report,
    )
    assert not refused.blessed and "accuracy" in refused.message
    register_op.python_func(
        model=model,
        evaluation=evaluation,
        blessing=blessing,
        model_name="strict",
        data_sha256=versioned.sha256,
        pipeline_run="local-2",
        mlflow_tracking_uri="",
    )
    assert client.get_registered_model("strict").aliases == {}
    assert client.get_model_version("strict", "1").tags["kfops.blessed"] == "false"


def test_validate_wrapper_writes_report_and_stops_or_warns(tmp_path, transactions):
    from kfops.components.contracts import KfopsError
    from kfops.components.datasets import write_snapshot

    store = str(tmp_path / "store")
    bad = transactions.copy()
    bad.loc[bad.index[:800], "amount"] = None  # 20% empty: over the default suite's 5%
    version = write_snapshot(bad, store, source="bad.parquet")
    result, report = artifact(dsl.Artifact, tmp_path, "result"), artifact(dsl.Markdown, tmp_path, "report")
    kwargs = dict(
        data_sha256=version.sha256,
        artifact_store=store,
        target="is_fraud",
        expectation_suite="",
        suite_sha256="",
        max_missing=0.05,
        validation_result=result,
        report=report,
    )
    with pytest.raises(KfopsError, match="column 'amount': expect_column_values_to_not_be_null"):
        validate_data_op.python_func(mode="fail", **kwargs)
    assert "| amount |" in (tmp_path / "report").read_text()  # the report is written even when it stops
    warned = validate_data_op.python_func(mode="warn", **kwargs)
    assert not warned.success and warned.failed_expectations == 1
    assert result.metadata["failed"] == 1
    with pytest.raises(KfopsError, match="mode must be 'fail' or 'warn'"):
        validate_data_op.python_func(mode="loud", **kwargs)


def test_validate_in_a_new_workspace_looks_up_no_champion_and_creates_no_store(tmp_path, transactions, monkeypatch):
    from kfops.components.datasets import write_snapshot

    store = str(tmp_path / "store")
    version = write_snapshot(transactions, store, source="first.parquet")
    db = tmp_path / "new-workspace" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    result, report = artifact(dsl.Artifact, tmp_path, "result"), artifact(dsl.Markdown, tmp_path, "report")
    checked = validate_data_op.python_func(
        data_sha256=version.sha256,
        artifact_store=store,
        target="is_fraud",
        expectation_suite="",
        suite_sha256="",
        max_missing=-1.0,
        mode="fail",
        model_name="first-model",
        mlflow_tracking_uri="",
        validation_result=result,
        report=report,
    )
    assert checked.success and checked.failed_expectations == 0
    origin = result.metadata["suite_origin"]
    assert origin == f"inferred (no champion of 'first-model' yet: the MLflow store {db} is new)"
    assert not db.exists()  # the store is made by the first step that writes to it (train), not by a lookup


def test_version_wrapper_stops_on_bad_data(tmp_path):
    from kfops.components.contracts import KfopsError

    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(KfopsError, match=r"bad\.csv: target column 'is_fraud' not found"):
        version_data_op.python_func(
            data_uri=str(tmp_path / "bad.csv"),
            data_version="",
            artifact_store=str(tmp_path / "s"),
            target="is_fraud",
            numeric_features=[],
            categorical_features=[],
            drop_columns=[],
            time_column="",
            positive_class="",
            task="auto",
            expectation_suite="",
        )
    assert not (tmp_path / "s").exists()  # nothing stored for data that failed its checks
