"""The gbdt family's parameters, checks and answers: what `kfops run --model gbdt` refuses before any step runs,
and the trees' scores in the model format's shape."""

from __future__ import annotations

import numpy as np
import pytest

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.contracts.models import GbdtConfig
from kfops.components.scoring import task_loss_value
from kfops.components.train.gbdt import class_scores, fit_gbdt
from kfops.components.train.loop import balances_classes


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_depth": 3}, "unknown gbdt parameter(s) ['max_depth']; known: learning_rate, max_iter"),
        ({"max_iter": 10.5}, "model_params.max_iter must be an integer, got 10.5"),
        ({"learning_rate": "fast"}, "model_params.learning_rate must be a number, got 'fast'"),
        ({"learning_rate": 0}, "model_params.learning_rate must be positive"),
        ({"max_leaf_nodes": 1}, "model_params.max_leaf_nodes must be at least 2"),
        ({"max_features": 1.5}, "model_params.max_features must be in (0, 1]"),
        ({"n_iter_no_change": True}, "model_params.n_iter_no_change must be an integer, got True"),
    ],
)
def test_bad_gbdt_parameters_are_refused_naming_the_parameter(params, message):
    with pytest.raises(KfopsError) as err:
        TrainConfig.from_dict({"model_family": "gbdt", "model_params": params}).check()
    assert message in str(err.value)


def test_the_family_and_its_parameters_are_checked_together():
    config = TrainConfig.from_dict({"model_family": "gbdt", "model_params": '{"max_iter": 40.0, "learning_rate": 0.2}'})
    config.check()
    assert config.model_params == {"max_iter": 40, "learning_rate": 0.2}  # typed: JSON text and floats from KFP
    assert config.gbdt() == GbdtConfig(max_iter=40, learning_rate=0.2)
    with pytest.raises(KfopsError, match=r"model_params \['max_iter'\] are another family's"):
        TrainConfig(model_params={"max_iter": 5}).check()
    with pytest.raises(KfopsError, match="gbdt trains on the CPU"):
        TrainConfig(model_family="gbdt", device="cuda").check()
    with pytest.raises(KfopsError, match="model_family must be mlp, gbdt, module, imported, got 'xgboost'"):
        TrainConfig(model_family="xgboost").check()
    with pytest.raises(KfopsError, match="model_params is not JSON"):
        TrainConfig.from_dict({"model_family": "gbdt", "model_params": "{max_iter: 5"})


def test_kfops_run_refuses_bad_model_parameters_before_any_step(tmp_path, capsys):
    from kfops.cli import main

    (tmp_path / "d.csv").write_text("x,y\n1,0\n2,1\n")
    argv = ["run", "--data", str(tmp_path / "d.csv"), "--target", "y", "--workspace", str(tmp_path / "ws")]
    assert main([*argv, "--model", "gbdt", "--model-params", '{"leaves": 8}']) == 2
    assert "unknown gbdt parameter(s) ['leaves']" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "mlflow.db").exists()  # nothing ran, nothing was recorded
    with pytest.raises(SystemExit):
        main([*argv, "--model", "gbdt", "--model-params", "[1, 2]"])
    assert "expected a JSON object" in capsys.readouterr().err


def test_trees_answer_in_the_model_formats_shape_and_stop_on_the_validation_split():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = np.digitize(x[:, 0] + 0.3 * rng.normal(size=600), [-0.5, 0.5]).astype(np.float64)  # classes 0, 1, 2
    config = TrainConfig(model_family="gbdt", model_params={"max_iter": 400, "n_iter_no_change": 5})
    # Four classes in the spec, the last never seen in training: its column is there, all zeros.
    result = fit_gbdt(x[:400], y[:400], x[400:], y[400:], config, task="multiclass", outputs=4)
    scores = class_scores(result.model, x[400:], "multiclass", 4)
    assert scores.shape == (200, 4) and np.allclose(scores.sum(axis=1), 1.0) and (scores[:, 3] == 0).all()
    assert result.stopped_early and result.best_epoch < 400 and len(result.history) == result.best_epoch
    assert result.best_val_loss == pytest.approx(task_loss_value("multiclass", y[400:], scores))
    assert result.history[-1]["val_accuracy"] > 0.7
    binary = fit_gbdt(x[:400], (y[:400] > 0).astype(float), x[400:], (y[400:] > 0).astype(float), config)
    probability = class_scores(binary.model, x[400:], "binary", 1)
    assert probability.shape == (200,) and ((probability >= 0) & (probability <= 1)).all()


def test_class_weighting_is_decided_once_for_both_families():
    rare = np.array([1.0] * 10 + [0.0] * 90)
    assert balances_classes("binary", rare, TrainConfig(), 1)
    assert not balances_classes("binary", rare, TrainConfig(class_weighting="none"), 1)
    assert not balances_classes("binary", np.array([1.0, 0.0] * 50), TrainConfig(), 1)
    assert balances_classes("multiclass", np.array([0] * 80 + [1] * 15 + [2] * 5), TrainConfig(), 3)
    assert not balances_classes("regression", rare, TrainConfig(class_weighting="balanced"), 1)


# ------------------------------------------------------------------------------------------------ the user's module
def _spec(task="binary"):
    from kfops.components.contracts import ColumnSpec, FeatureSpec

    columns = [ColumnSpec("a", "numeric"), ColumnSpec("c", "categorical", vocabulary=["x", "y"])]
    classes = ["p", "q", "r"] if task == "multiclass" else []
    return FeatureSpec(target="t", positive_class="1", negative_class="0", columns=columns, task=task, classes=classes)


@pytest.mark.parametrize(
    "source, message",
    [
        ("def fit(train, validation, spec, params):\n    pass\n", "defines no function train(train, validation"),
        ("import not_a_package_here\n", "does not import: ModuleNotFoundError: No module named 'not_a_package_here'"),
        ("def train(train, validation, spec, params):\n    return 42\n", "returned int, which has no predict_proba"),
        (
            "class M:\n    def predict_proba(self, frame):\n        return [[1.0]] * len(frame)\n"
            "def train(train, validation, spec, params):\n    return M()\n",
            "predict_proba answered shape (20, 1) for 20 rows; expected (20, 2)",
        ),
        (
            "def train(train, validation, spec, params):\n    return {}['missing']\n",
            "train() raised KeyError: 'missing' (",
        ),
    ],
)
def test_a_users_module_that_cannot_train_says_what_and_where(tmp_path, source, message):
    from kfops.components.train.user_module import fit_module

    path = tmp_path / "user.py"
    path.write_text(source)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), (rng.random(40) > 0.5).astype(np.float64)
    with pytest.raises(KfopsError) as err:
        fit_module(path, x[:20], y[:20], x[20:], y[20:], _spec(), {})
    assert str(path) in str(err.value) and message in str(err.value)


def test_the_module_sees_named_matrix_columns_and_its_classes_are_placed_by_classes_():
    from kfops.components.train.user_module import frame_of, module_scores

    spec = _spec("multiclass")
    assert list(frame_of(np.zeros((2, 4), dtype=np.float32), spec).columns) == ["a", "c=x", "c=y", "c=<other>"]

    class TwoOfThree:  # trained on classes 0 and 2 only, in that order
        classes_ = np.array([2, 0])

        def predict_proba(self, frame):
            return np.tile([0.7, 0.3], (len(frame), 1))

    scores = module_scores(TwoOfThree(), np.zeros((3, 4), dtype=np.float32), spec)
    assert scores.tolist() == [[0.3, 0.0, 0.7]] * 3


# ------------------------------------------------------------------------------------------------ every task
def bundled(name: str):
    """scikit-learn's wine (classes by name) or diabetes (original units), the target column ``target``."""
    from sklearn import datasets

    if name == "wine":
        data = datasets.load_wine(as_frame=True)
        return data.frame.assign(target=np.asarray(data.target_names)[data.frame["target"]])
    return datasets.load_diabetes(as_frame=True, scaled=False).frame


def prepared_dataset(frame, target: str, root):
    """The data steps' logic on a frame (schema, split, feature spec, matrices), written as the train step reads
    them: {name: path}."""
    from kfops.components.contracts import SplitConfig
    from kfops.components.ingest.logic import resolve_schema, split_frame, write_split
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.transform import encode_labels, save_matrix, transform_features

    schema = resolve_schema(frame, "data", target)
    splits = split_frame(frame, target, SplitConfig(seed=2))
    spec = fit_feature_spec(
        splits["train"], target, schema.numeric, schema.categorical, schema.positive_class, schema.negative_class,
        task=schema.task, classes=schema.classes,
    )  # fmt: skip
    spec.save(root / "spec.json")
    paths = {"spec": root / "spec.json"}
    for name, part in splits.items():
        write_split(part, root / f"{name}.parquet")
        save_matrix(str(root / f"{name}.npz"), transform_features(spec, part), encode_labels(spec, part[target]))
        paths[name], paths[f"{name}_raw"] = root / f"{name}.npz", root / f"{name}.parquet"
    return paths


@pytest.mark.parametrize(
    "name, task, metric, floor",
    [("wine", "multiclass", "balanced_accuracy", 0.85), ("diabetes", "regression", "r2", 0.2)],
)
def test_gbdt_trains_and_evaluates_every_task_on_bundled_data(tmp_path, mlflow_store, name, task, metric, floor):
    import mlflow

    from kfops.components.model_store import load_model_dir
    from kfops.components.scoring import evaluate_model
    from kfops.components.train.logic import train_model

    frame = bundled(name)
    paths = prepared_dataset(frame, "target", tmp_path)
    config = TrainConfig(model_family="gbdt", model_params={"max_leaf_nodes": 15}, device="cpu")
    outcome = train_model(
        str(paths["train"]), str(paths["validation"]), str(paths["spec"]), str(paths["train_raw"]), config,
        str(tmp_path / "model"), str(tmp_path / "tb"),
    )  # fmt: skip
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    assert run.data.tags["kfops.model_family"] == "gbdt" and run.data.tags["kfops.task"] == task
    result, _ = evaluate_model(str(tmp_path / "model"), str(paths["test_raw"]), outcome.best_val_loss)
    assert result.metrics[metric] > floor, result.metrics
    loaded = load_model_dir(tmp_path / "model")
    assert type(loaded.classifier).__name__ == "TreeModel" and loaded.spec.task == task
    rows = frame.drop(columns="target").head(10)
    served = loaded.predict_columns({c: rows[c].astype(float).tolist() for c in loaded.spec.feature_names}, 10)
    assert list(served["prediction"]) == loaded.predict(rows.astype(float))["prediction"].tolist()


CLASSIFIER_MODULE = """
from sklearn.linear_model import LogisticRegression


def train(train, validation, spec, params):
    assert sorted(set(train[spec.target])) == list(range(len(spec.labels)))  # class indices, spec.labels' order
    features = train.drop(columns=spec.target)
    return LogisticRegression(max_iter=params.get("max_iter", 500)).fit(features, train[spec.target])
"""

REGRESSION_MODULE = """
from sklearn.linear_model import Ridge


def train(train, validation, spec, params):
    assert train[spec.target].max() > 50  # the target in its own units, not standardised
    return Ridge(alpha=params.get("alpha", 1.0)).fit(train.drop(columns=spec.target), train[spec.target])
"""


@pytest.mark.parametrize(
    "name, source, metric, floor",
    [("wine", CLASSIFIER_MODULE, "balanced_accuracy", 0.9), ("diabetes", REGRESSION_MODULE, "r2", 0.3)],
)
def test_a_users_module_trains_every_task_on_bundled_data(tmp_path, mlflow_store, name, source, metric, floor):
    from kfops.components.model_store import load_model_dir
    from kfops.components.scoring import evaluate_model
    from kfops.components.train.logic import train_model

    frame = bundled(name)
    paths = prepared_dataset(frame, "target", tmp_path)
    (tmp_path / "user.py").write_text(source)
    config = TrainConfig.from_dict({"model_module": str(tmp_path / "user.py"), "device": "cpu"})
    outcome = train_model(
        str(paths["train"]), str(paths["validation"]), str(paths["spec"]), str(paths["train_raw"]), config,
        str(tmp_path / "model"), str(tmp_path / "tb"),
    )  # fmt: skip
    result, _ = evaluate_model(str(tmp_path / "model"), str(paths["test_raw"]), outcome.best_val_loss)
    assert result.metrics[metric] > floor, result.metrics
    loaded = load_model_dir(tmp_path / "model")
    assert type(loaded.classifier).__name__ == "ModuleModel"
    if name == "diabetes":  # answers in the target's units
        assert 25 < float(loaded.predict(frame.drop(columns="target").head(5))["prediction"].mean()) < 350
