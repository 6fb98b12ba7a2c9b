"""The gbdt family (scikit-learn's HistGradientBoosting) through `kfops run --model gbdt` on data that ships inside
scikit-learn, one dataset per task, written to CSV as a user would: trained, evaluated, gated, registered, and
served by the same predictor as the MLP, with the same answers as the registered pyfunc model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.e2e.helpers import run_json

pytestmark = pytest.mark.e2e


def dataset(name: str) -> tuple[pd.DataFrame, str]:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}
    if name == "diabetes":
        frame = datasets.load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
        return frame, "progression"
    data = loader[name](as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_").replace("/", "_"))
    frame["label"] = np.asarray(data.target_names)[frame.pop("target")]
    return frame, "label"


@pytest.mark.parametrize(
    "name, task, metric, floor",
    [
        ("breast_cancer", "binary", "roc_auc", 0.95),
        ("wine", "multiclass", "balanced_accuracy", 0.85),
        ("diabetes", "regression", "r2", 0.2),
    ],
)
def test_gbdt_through_the_chain_for_every_task(tmp_path, capsys, clean_env, name, task, metric, floor):
    import mlflow

    from kfops.components.model_store import load_model

    frame, target = dataset(name)
    frame.to_csv(tmp_path / f"{name}.csv", index=False)
    args = ["--data", str(tmp_path / f"{name}.csv"), "--target", target, "--workspace", str(tmp_path)]
    result = run_json(capsys, *args, "--model", "gbdt", "--model-params", '{"max_leaf_nodes": 15}')
    assert result["task"] == task and result["blessed"], result["blessing"]
    assert result["metrics"][metric] > floor, result["metrics"]

    client = mlflow.MlflowClient(result["mlflow_tracking_uri"])
    run = client.get_run(result["run_id"])
    assert run.data.tags["kfops.model_family"] == "gbdt" and run.data.params["model_family"] == "gbdt"
    assert run.data.params["model_params"] == '{"max_leaf_nodes": 15}'
    iterations = client.get_metric_history(result["run_id"], "epoch_val_loss")
    assert len(iterations) == int(run.data.metrics["best_epoch"]) > 1  # one point per boosting iteration

    # The registered model serves through the same seam as the MLP's, with the pyfunc model's own answers.
    loaded = load_model(f"{result['model_name']}@champion", result["mlflow_tracking_uri"])
    assert type(loaded.classifier).__name__ == "TreeModel"
    rows = frame.drop(columns=target).sample(25, random_state=0)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{result['model_name']}@champion")
    expected = pyfunc.predict(rows)
    columns = {c: rows[c].astype(float).tolist() for c in loaded.spec.feature_names}
    served = loaded.predict_columns(columns, len(rows))
    if task == "regression":
        assert np.allclose(served["prediction"], expected["prediction"])
        assert expected["prediction"].between(frame[target].min() - 50, frame[target].max() + 50).all()
    else:
        assert list(served["prediction"]) == expected["prediction"].tolist()
        assert np.allclose(served["probability"], expected["probability"])
        truth = frame.loc[rows.index, target].to_numpy()
        assert np.mean(expected["prediction"].to_numpy() == truth) > 0.8
