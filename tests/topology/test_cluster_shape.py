"""The suite end to end against the cluster's shape (tests/topology/conftest.py): the MLflow server on PostgreSQL
with ``--no-serve-artifacts`` and an ``s3://`` artifact root, data snapshots on S3. The shared `kfops run`
(``faulted_run``, which rode out three faults) is served with `kfops serve`, monitored with `kfops monitor`, and
its model promoted over and rolled back with `kfops models`; then the race-safe promotion of
tests/components/test_promotion.py runs with two processes against the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kfops.cli import main
from kfops.components import storage
from kfops.components.contracts import TAG_BLESSED, TAG_METRIC_PREFIX
from tests.conftest import free_port
from tests.topology.helpers import MODEL, assert_version_complete

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def serve_and_predict(model_ref: str, rows: list[dict], tmp_path: Path) -> dict:
    """`kfops serve` as its own process on 127.0.0.1, loading the model from the registry (S3): one V1 answer."""
    port, log = free_port(), tmp_path / "serve.log"
    command = [str(Path(sys.executable).with_name("kfops")), "serve", "--model", model_ref, "--name", "m"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--max-wait-ms", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"kfops serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/v1/models/m", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, f"kfops serve not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        answer = httpx.post(f"{base}/v1/models/m:predict", json={"instances": rows}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_run_serves_monitors_promotes_and_rolls_back_on_postgres_and_s3(
    topology_env, faulted_run, tmp_path, capsys, transactions
):
    import mlflow

    assert faulted_run.code == 0, faulted_run.output
    first = faulted_run.result
    assert first["mlflow_tracking_uri"] == topology_env.mlflow.uri and first["model_name"] == MODEL
    assert first["aliases"] == ["challenger", "champion"]
    assert first["download_uri"].startswith("s3://mlflow/")
    assert storage.exists(f"s3://kfops-store/datasets/{first['data_sha256']}/data.parquet")
    client = mlflow.MlflowClient()
    assert_version_complete(client, MODEL, first["model_version"])

    # Served from the registry: the model files come from S3, as KServe's storage initializer fetches them.
    rows = transactions.drop(columns=["is_fraud", "transaction_id", "customer_id"]).head(5)
    answer = serve_and_predict(f"{MODEL}@champion", json.loads(rows.to_json(orient="records")), tmp_path)
    assert len(answer["predictions"]) == 5

    # Drift of a window against the champion's training data (its snapshot on S3, found through the registry).
    window = tmp_path / "window.parquet"
    transactions.sample(1000, random_state=3).to_parquet(window, index=False)
    monitor_args = ["monitor", "--current", str(window), "--model", f"{MODEL}@champion", "--no-html"]
    assert main([*monitor_args, "--output", str(tmp_path / "drift"), "--json"]) == 0, capsys.readouterr().out
    drift = json.loads((tmp_path / "drift" / "drift.json").read_text())
    assert drift["dataset_drift"] is False
    capsys.readouterr()

    # A second blessed version of the same model files, promoted by hand over the run's, then rolled back.
    source = client.get_model_version(MODEL, first["model_version"]).source
    tags = {TAG_BLESSED: "true", TAG_METRIC_PREFIX + "f1_macro": "0.99"}
    second = str(mlflow.register_model(source, MODEL, tags=tags).version)
    assert main(["models", "promote", f"{MODEL}/{second}", "--json"]) == 0
    capsys.readouterr()
    aliases = {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}
    assert aliases["champion"] == second and aliases["previous"] == first["model_version"]
    assert main(["models", "rollback", MODEL, "--json"]) == 0
    rolled = json.loads(capsys.readouterr().out)
    assert rolled["champion"] == first["model_version"] and rolled["previous"] == second


def test_two_processes_racing_agree_on_the_winner_against_the_server(topology_env, tmp_path, prepared, fast_config):
    # The race test of tests/components/test_promotion.py, its store the MLflow server on PostgreSQL.
    import mlflow

    from tests.components import test_promotion
    from tests.conftest import train_prepared

    uri = topology_env.mlflow.uri
    outcome = train_prepared(
        prepared,
        fast_config,
        str(tmp_path / "model"),
        str(tmp_path / "tb"),
        experiment="topology-race",
        tracking_uri=uri,
        data_sha256=prepared["sha256"],
    )
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    test_promotion.test_two_processes_racing_agree_on_the_winner((uri, outcome.model_uri, client), tmp_path)
    # The race's models and their champions live in the server's PostgreSQL store, not in a local file.
    assert uri.startswith("http://127.0.0.1:")
    assert all("champion" in client.get_registered_model(f"race-{i}").aliases for i in range(4))
