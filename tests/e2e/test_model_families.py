"""Each model family but the MLP through the whole chain (`kfops run` through kfp.local: validated, trained or
brought in, evaluated, gated, registered, served), on data that ships inside scikit-learn written to CSV as a user
would: gbdt (`--model gbdt`), the user's module (`--model-module`), a model trained elsewhere (`kfops models
import`). Every task for gbdt and the module is in tests/components/test_gbdt.py.
"""

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


# The whole chain once per family here; every task for gbdt is trained and evaluated in
# tests/components/test_gbdt.py (the same steps' logic, without kfp.local's fixed cost per run).
@pytest.mark.parametrize("name, task, metric, floor", [("breast_cancer", "binary", "roc_auc", 0.95)])
def test_gbdt_through_the_chain(tmp_path, capsys, clean_env, name, task, metric, floor):
    import mlflow

    from kfops.components.model_store import load_model

    frame, target = dataset(name)
    frame.to_csv(tmp_path / f"{name}.csv", index=False)
    args = ["--data", str(tmp_path / f"{name}.csv"), "--target", target, "--workspace", str(tmp_path)]
    result = run_json(capsys, *args, "--model", "gbdt", "--model-params", '{"max_leaf_nodes": 15}')
    assert result["task"] == task and result["model_family"] == "gbdt" and result["blessed"], result["blessing"]
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
    mlflow.set_tracking_uri(result["mlflow_tracking_uri"])  # kfops run leaves this process's MLflow as it was
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


USER_MODULE = '''
"""A user's training module: their own estimator class, fitted on the kfops model matrix."""
import numpy as np
from sklearn.linear_model import LogisticRegression

REQUIREMENTS = ["scikit-learn"]


class ShrunkLogistic:
    """The user's own class: pickled with the model, found again through this file."""

    def __init__(self, strength):
        self.model = LogisticRegression(C=strength, max_iter=2000)

    def fit(self, frame, labels):
        self.model.fit(frame.to_numpy(), labels)
        self.classes_ = self.model.classes_
        return self

    def predict_proba(self, frame):
        return self.model.predict_proba(frame.to_numpy())


def train(train, validation, spec, params):
    assert spec.task == "binary" and set(train[spec.target]) == {0, 1}
    features = train.drop(columns=spec.target)
    assert list(features.columns) == list(validation.drop(columns=spec.target).columns)
    return ShrunkLogistic(params.get("strength", 1.0)).fit(features, train[spec.target].to_numpy())
'''

BROKEN_MODULE = """
def train(train, validation, spec, params):
    columns = list(train.columns)
    return columns["mean_radius"]  # a bug: a list indexed by name
"""


def test_the_users_own_training_module_through_the_chain(tmp_path, capsys, clean_env):
    import mlflow

    from kfops.cli import main
    from kfops.components.model_store import load_model

    frame, target = dataset("breast_cancer")
    frame.to_csv(tmp_path / "cancer.csv", index=False)
    (tmp_path / "my_model.py").write_text(USER_MODULE)
    args = ["--data", str(tmp_path / "cancer.csv"), "--target", target, "--workspace", str(tmp_path)]
    result = run_json(
        capsys, *args, "--model-module", str(tmp_path / "my_model.py"), "--model-params", '{"strength": 0.5}'
    )
    assert result["blessed"], result["blessing"]
    assert result["metrics"]["roc_auc"] > 0.97
    run = mlflow.MlflowClient(result["mlflow_tracking_uri"]).get_run(result["run_id"])
    assert run.data.tags["kfops.model_family"] == "module"
    assert run.data.tags["kfops.model_module"] == str(tmp_path / "my_model.py")

    # The module travels in the model: moved away, the registered model still loads and serves.
    (tmp_path / "my_model.py").rename(tmp_path / "moved.py")
    loaded = load_model(f"{result['model_name']}@champion", result["mlflow_tracking_uri"])
    assert type(loaded.classifier).__name__ == "ModuleModel"
    assert type(loaded.classifier.fitted).__name__ == "ShrunkLogistic"
    assert loaded.path and (__import__("pathlib").Path(loaded.path) / "artifacts" / "my_model.py").is_file()
    requirements = (__import__("pathlib").Path(loaded.path) / "requirements.txt").read_text()
    assert "scikit-learn" in requirements
    rows = frame.drop(columns=target).head(40)
    served = loaded.predict_columns({c: rows[c].astype(float).tolist() for c in loaded.spec.feature_names}, len(rows))
    assert np.mean(np.asarray(served["prediction"]) == frame[target].head(40).to_numpy()) > 0.9

    # A bug in the module: the run stops at train, naming the file and the line; nothing is registered.
    (tmp_path / "broken.py").write_text(BROKEN_MODULE)
    code = main(["run", *args, "--model-name", "broken", "--model-module", str(tmp_path / "broken.py")])
    out = capsys.readouterr().out
    assert code != 0 and "error in task 'train'" in out
    assert f"model module {tmp_path / 'broken.py'}: train() raised TypeError" in out
    assert "broken.py line 4, in train" in out
    assert mlflow.MlflowClient(result["mlflow_tracking_uri"]).search_model_versions("name='broken'") == []


def test_a_model_trained_elsewhere_is_imported_gated_served_and_monitored(tmp_path, capsys, clean_env):
    """A scikit-learn Pipeline the user trained and saved with MLflow, brought in with `kfops models import`."""
    import json

    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from kfops.cli import main
    from kfops.components.model_store import load_model

    frame, target = dataset("breast_cancer")
    features = [c for c in frame.columns if c != target][:12]  # the user's model used 12 of the 30 columns
    frame.insert(0, "patient_id", [f"P{i:04d}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "reference.csv", index=False)
    mine = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    mine.fit(frame[features], frame[target])  # labels as text: benign / malignant
    mlflow.sklearn.save_model(mine, tmp_path / "theirs", signature=infer_signature(frame[features]))

    args = [
        "models",
        "import",
        "--model-uri",
        str(tmp_path / "theirs"),
        "--reference-data",
        str(tmp_path / "reference.csv"),
    ]
    code = main([*args, "--target", target, "--model-name", "cancer-lr", "--workspace", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out[out.index("{") :])
    assert result["blessed"], result["blessing"]
    assert result["model_name"] == "cancer-lr" and result["metrics"]["roc_auc"] > 0.97
    run = mlflow.MlflowClient(result["mlflow_tracking_uri"]).get_run(result["run_id"])
    assert run.data.tags["kfops.model_family"] == "imported"
    assert run.data.tags["kfops.imported_model"] == str(tmp_path / "theirs")

    loaded = load_model("cancer-lr@champion", result["mlflow_tracking_uri"])
    assert type(loaded.classifier).__name__ == "ImportedModel" and loaded.spec.feature_names == features
    assert "patient_id" in loaded.spec.passthrough_columns  # kept out of the model, as for a trained one
    rows = frame.sample(30, random_state=4)
    served = loaded.predict_columns({c: rows[c].astype(float).tolist() for c in features}, len(rows))
    theirs = mine.predict_proba(rows[features])[:, list(mine.classes_).index(loaded.spec.positive_class)]
    assert np.allclose(served["probability"], theirs)
    assert list(served["prediction"]) == list(
        np.where(theirs >= 0.5, loaded.spec.positive_class, loaded.spec.negative_class)
    )

    # Monitored like a trained model: a window of the largest tumours drifts, in features and predictions.
    from kfops.components.transform import model_input_frame

    window = frame[frame["mean_radius"] > frame["mean_radius"].quantile(0.7)].drop(columns=target)
    scored = loaded.predict(model_input_frame(loaded.spec, window)).set_index(window.index)  # as the payload log
    window.join(scored[["prediction", "probability"]]).to_parquet(tmp_path / "window.parquet", index=False)
    monitor = ["monitor", "--model", "cancer-lr@champion", "--current", str(tmp_path / "window.parquet")]
    main([*monitor, "--no-html", "--json", "--output", str(tmp_path / "drift"), "--workspace", str(tmp_path)])
    out = capsys.readouterr().out
    drift = json.loads(out[out.index("{") :])
    assert drift["drifted_features"] > 0 and drift["model"] == "cancer-lr"
    predictions = {f["name"]: f for f in drift["prediction_drift"]}
    assert predictions["probability"]["drift_detected"]  # the model, scoring the window, sees more malignant


def test_an_xgboost_model_from_mlflow_is_imported_and_answers_as_xgboost_does(tmp_path, capsys, clean_env):
    """An XGBoost classifier logged with mlflow.xgboost (classes 0..2, as XGBoost wants them), imported with the
    reference data whose target holds those same class numbers."""
    import json

    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature
    from sklearn.datasets import load_wine

    from kfops.cli import main
    from kfops.components.model_store import load_model

    frame = load_wine(as_frame=True).frame.rename(columns=lambda c: c.replace("/", "_"))
    features = [c for c in frame.columns if c != "target"]
    frame.to_csv(tmp_path / "wine.csv", index=False)
    theirs = xgboost.XGBClassifier(n_estimators=40, max_depth=3, learning_rate=0.2, random_state=0)
    theirs.fit(frame[features], frame["target"])
    mlflow.xgboost.save_model(theirs, tmp_path / "xgb", signature=infer_signature(frame[features]))

    args = ["models", "import", "--model-uri", str(tmp_path / "xgb"), "--reference-data", str(tmp_path / "wine.csv")]
    code = main([*args, "--target", "target", "--model-name", "wine-xgb", "--workspace", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out[out.index("{") :])
    assert result["task"] == "multiclass" and result["blessed"], result["blessing"]
    loaded = load_model("wine-xgb@champion", result["mlflow_tracking_uri"])
    rows = frame.sample(40, random_state=1)
    served = loaded.predict_columns({c: rows[c].tolist() for c in features}, len(rows))
    expected = theirs.predict(rows[features])
    assert [str(v) for v in served["prediction"]] == [str(v) for v in expected]
    proba = theirs.predict_proba(rows[features])  # columns in XGBoost's class order 0, 1, 2
    for k in range(3):
        assert np.allclose(served[f"probability_{k}"], proba[:, k], atol=1e-6)
