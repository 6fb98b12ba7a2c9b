"""The tasks' metrics against scikit-learn's, the torch heads, and the naive-baseline gate of each task: a model of
shuffled labels is never blessed, whatever the task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kfops.components.contracts import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    MULTICLASS_METRIC_NAMES,
    REGRESSION_METRIC_NAMES,
    FeatureSpec,
    TrainConfig,
)
from kfops.components.scoring import (
    CLASSES_KEY,
    INVERSE_CLASS_ROWS_KEY,
    ROWS_KEY,
    multiclass_metrics,
    regression_metrics,
    standard_error,
)


def test_multiclass_metrics_match_scikit_learn():
    from sklearn import metrics as sk

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    got = multiclass_metrics(y, p)
    assert set(got) | {"val_loss"} == set(MULTICLASS_METRIC_NAMES)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    for average in ("macro", "weighted"):
        assert got[f"precision_{average}"] == pytest.approx(sk.precision_score(y, pred, average=average))
        assert got[f"recall_{average}"] == pytest.approx(sk.recall_score(y, pred, average=average))
        assert got[f"f1_{average}"] == pytest.approx(sk.f1_score(y, pred, average=average))
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, p))
    assert got["roc_auc_ovr"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr"))


def test_regression_metrics_match_scikit_learn_and_smape_is_safe_at_zero():
    from sklearn import metrics as sk

    rng = np.random.default_rng(1)
    y = rng.gamma(2.0, 50.0, 400)  # a skewed target
    p = y + rng.normal(scale=20.0, size=400)
    got = regression_metrics(y, p)
    assert set(got) | {"val_loss"} == set(REGRESSION_METRIC_NAMES)
    assert got["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(y, p)))
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(y, p))
    assert got["r2"] == pytest.approx(sk.r2_score(y, p))
    assert got["median_ae"] == pytest.approx(sk.median_absolute_error(y, p))
    # a row where target and prediction are both 0 counts 0; MAPE would divide by zero there
    zero = regression_metrics(np.array([0.0, 10.0]), np.array([0.0, 5.0]))
    assert zero["smape"] == pytest.approx((0.0 + 2 * 5 / 15) / 2)
    assert {n: HIGHER_IS_BETTER[n] for n in ("rmse", "mae", "r2", "smape", "log_loss", "roc_auc_ovr")} == {
        "rmse": False,
        "mae": False,
        "r2": True,
        "smape": False,
        "log_loss": False,
        "roc_auc_ovr": True,
    }
    assert len(METRIC_NAMES) == len(set(METRIC_NAMES))


def test_the_noise_of_each_tasks_lift_shrinks_with_the_test_rows():
    few = {ROWS_KEY: 30.0, CLASSES_KEY: 3.0, INVERSE_CLASS_ROWS_KEY: 3 / 10}
    many = {ROWS_KEY: 3000.0, CLASSES_KEY: 3.0, INVERSE_CLASS_ROWS_KEY: 3 / 1000}
    chance = {"balanced_accuracy": 0.4, "r2": 0.0}
    for metric in ("balanced_accuracy", "r2"):
        small, large = standard_error(metric, chance, few), standard_error(metric, chance, many)
        assert small == pytest.approx(10 * large)
    # (1/3) sqrt(0.4 x 0.6 x 3/10): a 3-class chance lift of 0.05 on 30 rows is well within it
    assert standard_error("balanced_accuracy", chance, few) == pytest.approx(np.sqrt(0.24 * 0.3) / 3)
    assert standard_error("r2", chance, few) == pytest.approx(np.sqrt(2 / 30))


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_torch_head_learns_each_task(task):
    from kfops.components.train.loop import fit

    rng = np.random.default_rng(2)
    x = rng.normal(size=(1200, 4)).astype(np.float32)
    if task == "multiclass":
        y = np.argmax(x[:, :3], axis=1).astype(np.float32)  # the largest of three inputs: 3 classes
        outputs = 3
    else:
        y = (2 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=1200)).astype(np.float32)
        outputs = 1
    config = TrainConfig(hidden_sizes=[16], epochs=15, batch_size=64, learning_rate=0.01, seed=0)
    result = fit(x[:1000], y[:1000], x[1000:], y[1000:], config, task=task, outputs=outputs)
    import torch

    with torch.inference_mode():
        out = result.model(torch.from_numpy(x[1000:])).numpy()
    if task == "multiclass":
        assert out.shape == (200, 3)
        assert (out.argmax(axis=1) == y[1000:]).mean() > 0.85
        assert result.history[-1]["val_accuracy"] > 0.85
    else:
        assert out.shape == (200, 1)
        assert regression_metrics(y[1000:], out[:, 0])["r2"] > 0.9
        assert "val_accuracy" not in result.history[-1]


@pytest.mark.parametrize(("dataset", "target"), [("wine", "cultivar"), ("diabetes", "progression")])
def test_a_model_of_shuffled_labels_is_never_blessed(tmp_path, capsys, monkeypatch, dataset, target):
    from sklearn.datasets import load_diabetes, load_wine

    from kfops.cli import main

    for name in ("MLFLOW_TRACKING_URI", "KFOPS_MLFLOW_ARTIFACT_ROOT", "KFOPS_WORKSPACE", "KFOPS_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    loader = load_wine if dataset == "wine" else load_diabetes
    frame = loader(as_frame=True).frame.rename(columns={"target": target})
    frame[target] = np.random.default_rng(5).permutation(frame[target].to_numpy())  # labels with no signal
    frame.to_csv(tmp_path / f"{dataset}.csv", index=False)
    code = main(["run", "--data", str(tmp_path / f"{dataset}.csv"), "--target", target, "--workspace", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "not blessed" in out and "vs naive baseline" in out
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (model,) = client.search_registered_models()
    assert "champion" not in model.aliases  # nothing moved
    spec_path = next(tmp_path.rglob("feature_spec.json"))
    assert FeatureSpec.load(spec_path).task == ("multiclass" if dataset == "wine" else "regression")


def test_a_version_1_feature_spec_loads_as_a_binary_classifiers():
    stored = json.loads(
        FeatureSpec(target="y", positive_class="1", negative_class="0", columns=[], positive_rate=0.1).to_json()
    )
    for key in ("task", "classes", "class_shares", "target_mean", "target_std"):
        stored.pop(key)
    stored["version"] = 1
    spec = FeatureSpec.from_dict(stored)
    assert (spec.task, spec.labels, spec.output_width, spec.version) == ("binary", ["0", "1"], 1, 2)
    with pytest.raises(ValueError, match="feature spec version 3 is not supported"):
        FeatureSpec.from_dict({**stored, "version": 3})
    assert pd.isna(regression_metrics(np.array([1.0, 1.0]), np.array([1.0, 2.0]))["r2"])  # constant target
