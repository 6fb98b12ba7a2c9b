"""Whole training-pipeline runs through kfp.local, driven the way users drive them: the `kfops run` command."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from kfops.cli import main
from kfops.components.datasets import canonical_sha256
from tests.e2e.helpers import run_json

pytestmark = pytest.mark.e2e
FAST = ["--epochs", "3", "--hidden-sizes", "16,8", "--batch-size", "256"]


def strip(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def latest_log(ws: Path) -> str:
    return sorted((ws / "logs").glob("run-*.log"))[-1].read_text()


def test_training_pipeline_runs_caches_and_retrains_on_a_stored_version(tmp_path, capsys, clean_env):
    import mlflow

    ws = tmp_path / "ws"
    lenient, strict = tmp_path / "lenient.yaml", tmp_path / "strict.yaml"
    lenient.write_text("accuracy: {lower: 0.5}\n")
    strict.write_text("thresholds:\n  accuracy: {lower: 0.99999}\n")
    first = run_json(capsys, "--rows", "3000", "--workspace", str(ws), "--thresholds", str(lenient), *FAST)
    data = pd.read_parquet(next((ws / "data").glob("transactions-3000-*.parquet")))
    assert first["data_sha256"] == canonical_sha256(data)
    assert first["model_version"] == "1" and first["aliases"] == ["challenger", "champion"]
    assert first["blessed"] and "check(s) passed" in first["blessing"]
    assert set(first["metrics"]) >= {"accuracy", "f1_macro", "roc_auc", "pr_auc", "val_loss"}
    assert first["metrics"]["accuracy"] > 0.9
    assert list(Path(first["tensorboard"]).glob("events.out.tfevents.*"))
    assert (ws / "store" / "datasets" / first["data_sha256"] / "data.parquet").exists()

    mlflow.set_tracking_uri(first["mlflow_tracking_uri"])
    client = mlflow.MlflowClient()
    version = client.get_model_version("fraud-detector", "1")
    assert version.tags["kfops.data_sha256"] == first["data_sha256"]
    assert version.tags["kfops.pipeline_run"].startswith("kfops-training")
    assert client.get_run(first["run_id"]).data.tags["kfops.data_uri"].endswith("transactions-3000-seed7.parquet")

    # Same data and parameters: every cached step is a cache hit and the registry is not duplicated.
    second = run_json(capsys, "--rows", "3000", "--workspace", str(ws), "--thresholds", str(lenient), *FAST)
    log = latest_log(ws)
    for task in ("split-data", "preprocess", "train", "evaluate"):
        assert f"Task {task} cache hit" in log
    assert "Executing task 'version-data'" in strip(log)
    assert "Executing task 'validate-data'" in strip(log)  # held to the champion's suite: never replayed
    assert second["run_id"] == first["run_id"] and second["model_version"] == "1"

    # Changed data never hits the cache; judged unblessed, its version moves no alias.
    changed = data.copy()
    changed.loc[5, "amount"] += 1.0
    changed.to_csv(tmp_path / "changed.csv", index=False)
    third = run_json(
        capsys,
        "--data",
        str(tmp_path / "changed.csv"),
        "--target",
        "is_fraud",
        "--drop",
        "transaction_id,customer_id",
        "--model-name",
        "fraud-detector",  # a file of the user's own would name a model of its own
        "--workspace",
        str(ws),
        "--thresholds",
        str(strict),
        *FAST,
    )
    assert third["data_sha256"] != first["data_sha256"]
    assert "cache hit" not in latest_log(ws)
    assert third["model_version"] == "2" and not third["blessed"] and third["aliases"] == []
    assert "accuracy" in third["blessing"] and "Executing task 'promote'" not in strip(latest_log(ws))
    aliases = {k: str(v) for k, v in client.get_registered_model("fraud-detector").aliases.items()}
    assert aliases == {"challenger": "1", "champion": "1"}

    # Retrain on the stored snapshot by its sha256 alone (no file needed), with a fresh training run.
    (tmp_path / "changed.csv").unlink()
    fourth = run_json(
        capsys,
        "--data-version",
        third["data_sha256"],
        "--target",
        "is_fraud",
        "--drop",
        "transaction_id,customer_id",
        "--model-name",
        "fraud-detector",
        "--workspace",
        str(ws),
        "--no-cache",
        "--thresholds",
        str(lenient),
        *FAST,
    )
    assert fourth["data_sha256"] == third["data_sha256"] and fourth["run_id"] != third["run_id"]
    assert fourth["model_version"] == "3" and fourth["aliases"] == ["challenger", "champion"]
    aliases = {k: str(v) for k, v in client.get_registered_model("fraud-detector").aliases.items()}
    assert aliases == {"challenger": "3", "champion": "3", "previous": "1"}


def test_data_that_fails_validation_stops_before_training(tmp_path, capsys, clean_env, transactions):
    frame = transactions.copy()
    frame.loc[frame.index[:800], "customer_age"] = None  # 20% empty: the fixed-cap suite asked for allows 5%
    frame.to_parquet(tmp_path / "gappy.parquet", index=False)
    args = [
        "run",
        "--data",
        str(tmp_path / "gappy.parquet"),
        "--target",
        "is_fraud",
        "--workspace",
        str(tmp_path / "ws"),
        "--max-missing",
        "0.05",
    ]
    assert main(args) == 2
    out = capsys.readouterr().out
    assert "validate-data" in out and "column 'customer_age': expect_column_values_to_not_be_null" in out
    assert "Executing task 'train'" not in strip(latest_log(tmp_path / "ws"))
    # --warn-only records the failure and trains anyway.
    assert main([*args, "--warn-only", *FAST, "--no-promote", "--json"]) == 0
    assert "Executing task 'train'" in strip(latest_log(tmp_path / "ws"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("amount,is_fraud\n1.0,0\n2.0,0\n3.0,0\n", "has only one class"),
        ("amount,label\n1.0,0\n2.0,1\n", "target column 'is_fraud' not found"),
    ],
)
def test_bad_data_stops_the_run_and_registers_nothing(tmp_path, capsys, clean_env, content, message):
    ws = tmp_path / "ws"
    (tmp_path / "bad.csv").write_text(content)
    code = main(["run", "--data", str(tmp_path / "bad.csv"), "--target", "is_fraud", "--workspace", str(ws)])
    out = capsys.readouterr().out
    assert code == 2
    assert message in out and "bad.csv" in out and "version-data" in out
    assert "nothing was registered" in out
    db = ws / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from registered_models").fetchone()[0] == 0


def test_text_in_a_numeric_column_names_file_column_and_value(tmp_path, capsys, clean_env, transactions):
    frame = transactions.drop(columns=["event_time"]).astype({"amount": object})
    frame.loc[7, "amount"] = "approx 40"
    frame.to_csv(tmp_path / "tx.csv", index=False)
    code = main(
        ["run", "--data", str(tmp_path / "tx.csv"), "--target", "is_fraud", "--workspace", str(tmp_path / "ws")]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert "tx.csv: column 'amount' is numeric but 1 value(s) are text" in out and "'approx 40'" in out


def test_the_default_run_on_the_default_data_is_blessed_and_promoted(tmp_path, capsys, clean_env):
    # `kfops run` exactly as the quick start runs it: 100,000 rows, default model, default gate thresholds.
    result = run_json(capsys, "--workspace", str(tmp_path / "ws"))
    assert result["blessed"], result["blessing"]
    assert result["aliases"] == ["challenger", "champion"]
    assert result["metrics"]["accuracy"] >= 0.90 and result["metrics"]["f1_macro"] >= 0.85
    assert "1 change check(s) skipped (no champion yet)" in result["blessing"]


SENTINEL_KEY_ID = "AKIAKFOPSSENTINEL0001"
SENTINEL_SECRET = "kfops-sentinel-secret-9f2c61d0b7"


def test_data_and_snapshots_on_s3(tmp_path, capsys, clean_env, s3_env, transactions, monkeypatch):
    # MinIO's API through moto on 127.0.0.1: the data is read from s3:// and the snapshot stored there; the
    # tasks get the endpoint and credentials from the environment, as pods get them from a Secret. The
    # credentials are sentinels, looked for afterwards everywhere the run wrote.
    from kfops.components import storage
    from kfops.components.datasets import list_versions

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SENTINEL_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL_SECRET)

    storage.write_bytes("s3://raw/tx.parquet", transactions.to_parquet(index=False))
    result = run_json(
        capsys,
        "--data",
        "s3://raw/tx.parquet",
        "--target",
        "is_fraud",
        "--drop",
        "transaction_id,customer_id",
        "--artifact-store",
        "s3://kfops-e2e",
        "--workspace",
        str(tmp_path / "ws"),
        "--thresholds",
        str(_lenient(tmp_path)),
        *FAST,
    )
    assert [v.sha256 for v in list_versions("s3://kfops-e2e")] == [result["data_sha256"]]
    assert storage.exists(f"s3://kfops-e2e/datasets/{result['data_sha256']}/data.parquet")
    assert result["model_version"] == "1"
    _assert_no_secret_written(tmp_path, capsys.readouterr(), result)


def _assert_no_secret_written(tmp_path: Path, captured, result: dict) -> None:
    """Secrets never reach logs, MLflow params and tags, stored artifacts or the compiled YAML."""
    import mlflow

    from kfops.components import storage

    sentinels = (SENTINEL_KEY_ID.encode(), SENTINEL_SECRET.encode())
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and any(s in p.read_bytes() for s in sentinels)]
    client = storage.s3_client()
    for bucket in ("raw", "kfops-e2e"):
        for obj in client.list_objects(bucket, recursive=True):
            if any(s in storage.read_bytes(f"s3://{bucket}/{obj.object_name}") for s in sentinels):
                leaks.append(f"s3://{bucket}/{obj.object_name}")
    run = mlflow.MlflowClient(result["mlflow_tracking_uri"]).get_run(result["run_id"])
    text = json.dumps([run.data.params, run.data.tags, captured.out, captured.err])
    leaks += [f"MLflow run or console: {s.decode()}" for s in sentinels if s.decode() in text]
    compiled = Path(__file__).resolve().parents[2] / "pipelines" / "compiled"
    leaks += [str(p) for p in compiled.glob("*.yaml") if any(s in p.read_bytes() for s in sentinels)]
    assert leaks == []


def _lenient(tmp_path: Path) -> Path:
    path = tmp_path / "lenient.yaml"
    path.write_text("accuracy: {lower: 0.5}\n")
    return path
