"""Every tabular task through `kfops run` with no flag but --data and --target, on data that ships inside
scikit-learn written to CSV as a user would hand it over: the task is inferred, the model trained with the task's
head, evaluated in the task's metrics, gated against the task's naive baseline, registered, and served (V1 and
V2) with the task's answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kfops.cli import main
from tests.e2e.helpers import run_json

pytestmark = pytest.mark.e2e


def iris_csv(path) -> pd.DataFrame:
    """Iris with the species by name and a few blanks, as a spreadsheet export would have it."""
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = data.target_names[frame.pop("target")]
    frame.loc[np.random.default_rng(3).random(len(frame)) < 0.05, "petal_width"] = np.nan
    frame.to_csv(path, index=False)
    return frame


def diabetes_csv(path) -> pd.DataFrame:
    """Diabetes progression in its original units (age in years, sex 1/2, BMI, ...), a patient id in front."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    frame.insert(0, "patient_id", [f"D{i:04d}" for i in range(len(frame))])
    frame.to_csv(path, index=False)
    return frame


def serve(model_ref: str, tracking_uri: str, v1_body: dict, v2_body: dict) -> tuple[dict, dict, dict]:
    """V1 and V2 answers and the V2 metadata of the registered model, served in-process."""
    from fastapi.testclient import TestClient

    from kfops.serving.app import build_app
    from kfops.serving.predictor import TabularPredictor

    predictor = TabularPredictor("m", model_ref, tracking_uri, max_wait_ms=1)
    predictor.load()
    try:
        with TestClient(build_app(predictor), raise_server_exceptions=False) as client:
            v1 = client.post("/v1/models/m:predict", json=v1_body)
            v2 = client.post("/v2/models/m/infer", json=v2_body)
            meta = client.get("/v2/models/m")
    finally:
        predictor.stop()
    for answer in (v1, v2, meta):
        assert answer.status_code == 200, answer.text
    return v1.json(), v2.json(), meta.json()


def live_report(model_ref: str, tracking_uri: str, rows: pd.DataFrame, truth: pd.Series, tmp_path, capsys) -> dict:
    """Each row served as its own V1 request (request id ``r<index>``) with the payload log on, the true values
    logged as outcomes with `kfops outcomes log`, then `kfops outcomes report --json`: the report and the served
    predictions (by request id)."""
    from fastapi.testclient import TestClient

    from kfops.serving.app import build_app
    from kfops.serving.payload_log import PayloadLogger
    from kfops.serving.predictor import TabularPredictor

    sink = str(tmp_path / "payload-log")
    served = {}
    with PayloadLogger(sink, "m", flush_seconds=0.05) as logger:
        predictor = TabularPredictor("m", model_ref, tracking_uri, max_wait_ms=1, payload_logger=logger)
        predictor.load()
        try:
            with TestClient(build_app(predictor), raise_server_exceptions=False) as client:
                for index, row in zip(rows.index, records(rows), strict=True):
                    answer = client.post(
                        "/v1/models/m:predict", json={"instances": [row]}, headers={"x-request-id": f"r{index}"}
                    )
                    assert answer.status_code == 200, answer.text
                    served[f"r{index}"] = answer.json()["predictions"][0]["prediction"]
        finally:
            predictor.stop()
    pd.DataFrame({"request_id": [f"r{i}" for i in truth.index], "outcome": truth.to_numpy()}).to_csv(
        tmp_path / "outcomes.csv", index=False
    )
    assert main(["outcomes", "log", "--sink", sink, "--file", str(tmp_path / "outcomes.csv")]) == 0
    capsys.readouterr()
    assert main(["outcomes", "report", "--payload-log", sink, "--since", "1h", "--json"]) == 0
    return json.loads(capsys.readouterr().out), served


def v2_inputs(rows: pd.DataFrame) -> dict:
    inputs = []
    for name, column in rows.items():
        if pd.api.types.is_numeric_dtype(column):
            data = [None if pd.isna(v) else float(v) for v in column]
            inputs.append({"name": name, "datatype": "FP64", "shape": [len(rows)], "data": data})
        else:
            inputs.append({"name": name, "datatype": "BYTES", "shape": [len(rows)], "data": column.tolist()})
    return {"inputs": inputs}


def batch_predict(tmp_path, model: str, rows: pd.DataFrame, capsys) -> pd.DataFrame:
    """`kfops predict` over the rows written to CSV; the predictions in the rows' order."""
    rows.to_csv(tmp_path / "batch.csv", index=False)
    out = tmp_path / f"predictions-{model.split('@')[0]}"
    args = ["predict", "--model", model, "--input", str(tmp_path / "batch.csv"), "--output", str(out)]
    assert main([*args, "--workspace", str(tmp_path)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    scored = pd.concat(pd.read_parquet(p) for p in sorted(out.glob("*.parquet")))
    scored.index = [int(r.rsplit(":", 1)[1]) for r in scored["request_id"]]  # <file>:<row>
    return scored.sort_index().set_axis(rows.index)


def monitor(tmp_path, model: str, window: pd.DataFrame, capsys) -> dict:
    """`kfops monitor` of a scored window (features, prediction, probability: a payload log's columns) against the
    model's training data, scored by the model: the prediction columns' verdicts."""
    window.to_parquet(tmp_path / "window.parquet", index=False)
    args = ["monitor", "--model", model, "--current", str(tmp_path / "window.parquet"), "--no-html", "--json"]
    main([*args, "--output", str(tmp_path / "drift"), "--workspace", str(tmp_path)])
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    return {f["name"]: f for f in result["prediction_drift"]}


def triton_infer(model_ref: str, tracking_uri: str, rows: pd.DataFrame, tmp_path) -> dict[str, np.ndarray]:
    """Triton's own HTTP client (binary tensors) against `python -m kfops.serving` on 127.0.0.1: the outputs."""
    import os
    import signal
    import subprocess
    import sys

    import tritonclient.http as httpclient

    from tests.serving.test_server import NAME, free_port, wait_ready

    port, log = free_port(), tmp_path / "server.log"
    command = [sys.executable, "-m", "kfops.serving", "--model", model_ref, "--name", NAME, "--host", "127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port), "--max-wait-ms", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        tensors = []
        for name, column in rows.items():
            if pd.api.types.is_numeric_dtype(column):
                tensor = httpclient.InferInput(name, [len(rows)], "FP64")
                tensor.set_data_from_numpy(column.to_numpy(dtype=np.float64, na_value=np.nan), binary_data=True)
            else:
                tensor = httpclient.InferInput(name, [len(rows)], "BYTES")
                tensor.set_data_from_numpy(np.array([v.encode() for v in column], dtype=np.object_), binary_data=True)
            tensors.append(tensor)
        result = httpclient.InferenceServerClient(f"127.0.0.1:{port}").infer(NAME, tensors)
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def records(rows: pd.DataFrame) -> list[dict]:
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in rows.to_dict(orient="records")]


def test_iris_is_a_multiclass_model_with_every_class_probability(tmp_path, capsys, clean_env):
    frame = iris_csv(tmp_path / "iris.csv")
    result = run_json(capsys, "--data", str(tmp_path / "iris.csv"), "--target", "species", "--workspace", str(tmp_path))
    assert result["model_name"] == "iris-species" and result["task"] == "multiclass"
    assert result["blessed"], result["blessing"]
    metrics = result["metrics"]
    assert {"balanced_accuracy", "f1_weighted", "log_loss", "roc_auc_ovr"} <= set(metrics)
    assert "roc_auc" not in metrics and "pr_auc" not in metrics  # binary metrics have no meaning here
    assert metrics["accuracy"] > 0.85 and metrics["roc_auc_ovr"] > 0.9

    import mlflow

    mlflow.set_tracking_uri(result["mlflow_tracking_uri"])
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.data.tags["kfops.task"] == "multiclass"
    thresholds = json.loads(run.data.tags["kfops.gate.thresholds"])
    assert thresholds["balanced_accuracy"] == {"baseline": {"absolute": 0.05}}  # the task's default gate
    assert float(run.data.tags["kfops.gate.naive.balanced_accuracy"]) == pytest.approx(1 / 3)

    rows = frame.drop(columns="species").sample(30, random_state=1)
    v1, v2, meta = serve(
        "iris-species@champion",
        result["mlflow_tracking_uri"],
        {"instances": records(rows)},
        {"inputs": v2_inputs(rows)["inputs"]},
    )
    classes = {"setosa", "versicolor", "virginica"}
    for answer in v1["predictions"]:
        assert answer["prediction"] in classes and set(answer["probabilities"]) == classes
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert answer["probability"] == pytest.approx(max(answer["probabilities"].values()))
    truth = frame.loc[rows.index, "species"].to_numpy()
    assert np.mean(np.array([a["prediction"] for a in v1["predictions"]]) == truth) > 0.8
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert set(outputs) == {"prediction", "probability", *(f"probability_{c}" for c in sorted(classes))}
    assert outputs["prediction"]["data"] == [a["prediction"] for a in v1["predictions"]]
    assert {o["name"] for o in meta["outputs"]} == set(outputs)

    # Triton's client, binary tensors, the same answers (NaN is the missing value in a binary tensor).
    triton = triton_infer("iris-species@champion", result["mlflow_tracking_uri"], rows, tmp_path)
    assert [v.decode() if isinstance(v, bytes) else str(v) for v in triton["prediction"]] == [
        a["prediction"] for a in v1["predictions"]
    ]
    assert np.allclose(triton["probability_setosa"], [a["probabilities"]["setosa"] for a in v1["predictions"]])

    # Batch prediction writes the class and its probability, the same as serving's.
    scored = batch_predict(tmp_path, "iris-species@champion", frame.drop(columns="species"), capsys)
    assert set(scored["prediction"]) <= classes and scored["probability"].between(1 / 3, 1.0).all()
    assert scored.loc[rows.index, "prediction"].tolist() == [a["prediction"] for a in v1["predictions"]]

    # A window of one species, scored as the payload log records it: the predicted classes' shares drifted.
    window = frame.drop(columns="species").join(scored[["prediction", "probability"]])[frame["species"] == "virginica"]
    drift = monitor(tmp_path, "iris-species@champion", pd.concat([window] * 3), capsys)
    assert drift["prediction"]["kind"] == "categorical" and drift["prediction"]["drift_detected"]

    # Live performance: served predictions joined to the true species, in the multiclass terms.
    report, served = live_report(
        "iris-species@champion", result["mlflow_tracking_uri"], rows, frame.loc[rows.index, "species"], tmp_path, capsys
    )
    assert report["task"] == "multiclass" and report["positive_class"] is None
    (group,) = report["groups"]
    assert (group["predictions"], group["joined"], group["invalid_outcomes"]) == (30, 30, 0)
    hits = [served[f"r{i}"] == frame.loc[i, "species"] for i in rows.index]
    assert group["accuracy"] == pytest.approx(np.mean(hits))
    species = frame.loc[rows.index, "species"].to_numpy()
    recalls = [np.mean(np.array(hits)[species == c]) for c in classes]
    assert group["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert set(group["predicted_shares"]) == set(group["outcome_shares"]) == classes
    assert sum(group["outcome_shares"].values()) == pytest.approx(1.0)


def test_diabetes_is_a_regression_answered_in_its_own_units(tmp_path, capsys, clean_env):
    frame = diabetes_csv(tmp_path / "diabetes.csv")
    result = run_json(
        capsys, "--data", str(tmp_path / "diabetes.csv"), "--target", "progression", "--workspace", str(tmp_path)
    )
    assert result["model_name"] == "diabetes-progression" and result["task"] == "regression"
    assert result["blessed"], result["blessing"]
    metrics = result["metrics"]
    assert {"rmse", "mae", "r2", "median_ae", "smape"} <= set(metrics)
    assert "accuracy" not in metrics
    assert metrics["r2"] > 0.25  # the mean predictor's is about 0; a linear model's about 0.45
    assert metrics["rmse"] < frame["progression"].std()

    rows = frame.drop(columns="progression").sample(40, random_state=2)
    v1, v2, meta = serve(
        "diabetes-progression@champion",
        result["mlflow_tracking_uri"],
        {"instances": records(rows)},
        v2_inputs(rows.drop(columns="patient_id")),
    )
    predicted = np.array([a["prediction"] for a in v1["predictions"]])
    assert all(set(a) == {"prediction", "model_version"} for a in v1["predictions"])
    assert predicted.min() >= 25 and predicted.max() <= 346  # the target's units, not standardised ones
    truth = frame.loc[rows.index, "progression"].to_numpy()
    assert np.corrcoef(predicted, truth)[0, 1] > 0.4
    (output,) = v2["outputs"]
    assert output["name"] == "prediction" and output["datatype"] == "FP64"
    assert np.allclose(output["data"], predicted)
    assert meta["outputs"] == [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]

    triton = triton_infer(
        "diabetes-progression@champion", result["mlflow_tracking_uri"], rows.drop(columns="patient_id"), tmp_path
    )
    assert triton["prediction"].dtype == np.float64 and np.allclose(triton["prediction"], predicted)

    # Batch prediction writes the value (a number) and no probability.
    scored = batch_predict(tmp_path, "diabetes-progression@champion", frame.drop(columns="progression"), capsys)
    assert scored["prediction"].dtype == np.float64 and scored["probability"].isna().all()
    assert np.allclose(scored.loc[rows.index, "prediction"], predicted)

    # A window of the heaviest patients, scored: the predictions, tested as numbers, drifted upwards.
    window = frame.drop(columns="progression").join(scored[["prediction", "probability"]])
    window = window[window["bmi"] > window["bmi"].quantile(0.7)]
    drift = monitor(tmp_path, "diabetes-progression@champion", window, capsys)
    assert drift["prediction"]["kind"] == "numeric" and drift["prediction"]["drift_detected"]

    # Live performance: served values joined to the measured progression, in the regression terms.
    measured = frame.loc[rows.index, "progression"]
    report, served = live_report(
        "diabetes-progression@champion", result["mlflow_tracking_uri"], rows, measured, tmp_path, capsys
    )
    assert report["task"] == "regression"
    (group,) = report["groups"]
    assert (group["predictions"], group["joined"], group["invalid_outcomes"]) == (40, 40, 0)
    errors = np.array([served[f"r{i}"] for i in rows.index]) - frame.loc[rows.index, "progression"].to_numpy()
    assert np.allclose([served[f"r{i}"] for i in rows.index], predicted)  # one row at a time, the same values
    assert group["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert group["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert group["mean_outcome"] == pytest.approx(frame.loc[rows.index, "progression"].mean())
    assert "accuracy" not in group


def test_an_ambiguous_numeric_target_asks_for_the_task(tmp_path, capsys, clean_env):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "rating": rng.integers(1, 15, 300)})  # 14 whole numbers
    frame.to_csv(tmp_path / "ratings.csv", index=False)
    args = ["run", "--data", str(tmp_path / "ratings.csv"), "--target", "rating", "--workspace", str(tmp_path)]
    assert main(args) != 0
    out = capsys.readouterr().out
    assert "14 distinct numeric values" in out and "--task multiclass or --task regression" in out
