from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.train.logic import train_model
from kfops.components.train.loop import build_mlp, fit
from kfops.components.transform import load_matrix
from tests.conftest import train_prepared


def matrices(prepared):
    x_train, y_train = load_matrix(str(prepared["train_matrix"]))
    x_val, y_val = load_matrix(str(prepared["validation_matrix"]))
    return x_train, y_train, x_val, y_val


def test_same_seed_and_data_give_the_same_model(prepared, fast_config):
    first = fit(*matrices(prepared), fast_config)
    second = fit(*matrices(prepared), fast_config)
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    other = fit(*matrices(prepared), dataclasses.replace(fast_config, seed=99))
    assert [r["val_loss"] for r in other.history] != [r["val_loss"] for r in first.history]


def test_training_learns_and_keeps_the_best_epoch(prepared, fast_config):
    x_train, y_train, x_val, y_val = matrices(prepared)
    # Unweighted loss, so accuracy at 0.5 is the quantity the loss optimises ("auto" would reweight
    # this 2.5%-positive data and trade accuracy for recall).
    config = dataclasses.replace(fast_config, epochs=8, early_stopping_patience=0, class_weighting="none")
    result = fit(x_train, y_train, x_val, y_val, config)
    assert len(result.history) == 8
    losses = [r["val_loss"] for r in result.history]
    assert result.best_val_loss == min(losses) and result.best_epoch == losses.index(min(losses)) + 1
    assert losses[-1] < losses[0]
    majority = 1 - y_val.mean()
    assert result.history[result.best_epoch - 1]["val_accuracy"] >= majority
    assert result.device == "cpu" and result.samples_per_second > 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_other_optimizers_and_balanced_weights(prepared, fast_config, optimizer):
    config = dataclasses.replace(fast_config, optimizer=optimizer, class_weighting="balanced", epochs=2)
    assert len(fit(*matrices(prepared), config).history) == 2


def test_early_stopping(prepared, fast_config):
    # A learning rate this small cannot improve validation loss by the tolerance: it stops after patience.
    config = dataclasses.replace(fast_config, learning_rate=1e-9, epochs=20, early_stopping_patience=2)
    result = fit(*matrices(prepared), config)
    assert result.stopped_early and len(result.history) == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_sizes", [], "hidden_sizes"),
        ("dropout", 1.5, "dropout"),
        ("learning_rate", 0, "learning_rate"),
        ("batch_size", 0, "batch_size"),
        ("optimizer", "lbfgs", "optimizer"),
        ("device", "tpu", "device"),
        ("class_weighting", "x", "class_weighting"),
    ],
)
def test_bad_config_is_refused(field, value, message):
    with pytest.raises(KfopsError, match=message):
        dataclasses.replace(TrainConfig(), **{field: value}).check()


def test_unknown_config_key_and_float_ints():
    with pytest.raises(KfopsError, match=r"unknown parameter\(s\) \['layers'\]"):
        TrainConfig.from_dict({"layers": 3})
    cfg = TrainConfig.from_dict({"hidden_sizes": [32.0, 16.0], "batch_size": 64.0})
    assert cfg.hidden_sizes == [32, 16] and cfg.batch_size == 64


def test_cuda_requested_without_a_gpu_is_a_clear_error(prepared, fast_config):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(KfopsError, match="no CUDA device"):
        fit(*matrices(prepared), dataclasses.replace(fast_config, device="cuda"))


def test_mlp_shape():
    import torch

    net = build_mlp(7, [5, 3], 0.2)
    assert net(torch.zeros(4, 7)).shape == (4, 1)


def test_train_model_logs_everything_to_mlflow_and_tensorboard(tmp_path, prepared, fast_config, mlflow_store):
    import mlflow
    import mlflow.pyfunc

    outcome = train_prepared(
        prepared,
        fast_config,
        str(tmp_path / "model"),
        str(tmp_path / "tb"),
        experiment="unit",
        data_uri="s3://raw/tx.parquet",
        data_sha256=prepared["sha256"],
        tensorboard_root=str(tmp_path / "tb-store"),
    )
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["kfops.data_sha256"] == prepared["sha256"] and tags["kfops.data_uri"] == "s3://raw/tx.parquet"
    assert tags["kfops.seed"] == "3" and tags["kfops.version.torch"] and tags["kfops.git_commit"]
    assert "kfops.image" in tags and tags["kfops.device"] == "cpu"
    assert params["hidden_sizes"] == "[16, 8]" and params["optimizer"] == "adamw"
    history = mlflow.MlflowClient().get_metric_history(outcome.run_id, "epoch_val_loss")
    assert [m.step for m in history] == list(range(1, outcome.epochs_run + 1))
    assert run.data.metrics["val_loss"] == pytest.approx(outcome.best_val_loss)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(outcome.run_id, "config")}
    assert "config/resolved_config.json" in artifacts
    resolved = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="config/resolved_config.json")
        ).read_text()
    )
    assert resolved["train"]["seed"] == 3 and len(resolved["history"]) == outcome.epochs_run
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and list(Path(outcome.tensorboard_uri).glob("events.out.tfevents.*"))

    # The one model artifact: raw rows in, class and positive-class probability out.
    test = pd.read_parquet(prepared["test_raw"])
    for uri in (str(tmp_path / "model"), outcome.model_uri):
        model = mlflow.pyfunc.load_model(uri)
        from kfops.components.contracts import FeatureSpec
        from kfops.components.transform import model_input_frame

        spec = FeatureSpec.load(prepared["spec"])
        out = model.predict(model_input_frame(spec, test.head(50)))
        assert list(out.columns) == ["prediction", "probability"] and len(out) == 50
        assert set(out["prediction"]) <= {"0", "1"}
        assert ((out["probability"] >= 0) & (out["probability"] <= 1)).all()
        # The class is the probability against the threshold chosen on validation (F1 by default) and logged.
        threshold = mlflow.MlflowClient().get_run(outcome.run_id).data.metrics["decision_threshold"]
        assert 0 < threshold < 1
        assert (out["prediction"] == np.where(out["probability"] >= threshold, "1", "0")).all()
    signature = model.metadata.get_input_schema()
    assert signature.input_names() == spec.feature_names
    requirements = (tmp_path / "model" / "requirements.txt").read_text()
    assert "torch==" in requirements and "mlflow==" in requirements


def test_train_model_refuses_a_spec_that_does_not_match(tmp_path, prepared, fast_config, mlflow_store):
    from kfops.components.contracts import FeatureSpec

    spec = FeatureSpec.load(prepared["spec"])
    spec.columns = spec.columns[:-1]
    spec.save(tmp_path / "spec.json")
    with pytest.raises(KfopsError, match=r"feature spec .* describes"):
        train_model(
            str(prepared["train_matrix"]),
            str(prepared["validation_matrix"]),
            str(tmp_path / "spec.json"),
            str(prepared["train_raw"]),
            fast_config,
            str(tmp_path / "m"),
            str(tmp_path / "tb"),
        )


def test_no_tracking_uri_is_an_error(monkeypatch):
    from kfops.components.tracking import set_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(KfopsError, match="no MLflow tracking URI"):
        set_tracking("")
