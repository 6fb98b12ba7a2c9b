"""Checkpoints: a training process SIGKILLed after an epoch resumes from the artifact store and ends exactly where
an uninterrupted run with the same seed ends (CPU), logging into the MLflow run it started."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kfops.components.contracts import KfopsError
from kfops.components.train.checkpoint import CheckpointStore
from kfops.components.train.loop import fit
from kfops.components.transform import load_matrix
from tests.conftest import train_prepared

KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from kfops.components.contracts import TrainConfig
    from kfops.components.train.checkpoint import CheckpointStore
    from tests.conftest import train_prepared

    prepared = {"train_matrix": sys.argv[1], "validation_matrix": sys.argv[2], "spec": sys.argv[3],
                "train_raw": sys.argv[4]}
    config = TrainConfig(hidden_sizes=[16, 8], epochs=5, batch_size=256, early_stopping_patience=0, seed=3,
                         device="cpu", dropout=0.2)

    def die(row):  # the pod is killed during epoch 4's bookkeeping: epoch 3's checkpoint is the latest
        if row["epoch"] == 4:
            os.kill(os.getpid(), signal.SIGKILL)

    train_prepared(prepared, config, sys.argv[5] + "/m", sys.argv[5] + "/tb", experiment="ckpt", epoch_hook=die,
                   checkpoint=CheckpointStore(sys.argv[6], every=1))
    """
)


def config_of(fast_config):
    return dataclasses.replace(fast_config, epochs=5, early_stopping_patience=0, dropout=0.2)


def matrices(prepared):
    return (*load_matrix(str(prepared["train_matrix"])), *load_matrix(str(prepared["validation_matrix"])))


def test_a_killed_run_resumes_to_the_same_model_and_metrics(tmp_path, prepared, fast_config, mlflow_store):
    import mlflow
    import torch

    store = CheckpointStore(str(tmp_path / "checkpoints"), every=1)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    paths = [str(prepared[k]) for k in ("train_matrix", "validation_matrix", "spec", "train_raw")]
    done = subprocess.run(
        [sys.executable, str(script), *paths, str(tmp_path), store.uri],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),  # `tests` imports from here
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    saved = store.load()
    assert saved["epoch"] == 3 and len(saved["history"]) == 3 and saved["extra"]["mlflow_run_id"]
    killed_run = mlflow.MlflowClient().get_run(saved["extra"]["mlflow_run_id"])
    assert killed_run.info.status == "RUNNING"  # nobody ended it: the process died

    config = config_of(fast_config)
    resumed = train_prepared(prepared, config, tmp_path / "m2", tmp_path / "tb2", experiment="ckpt", checkpoint=store)
    uninterrupted = fit(*matrices(prepared), config)
    assert resumed.resumed_from_epoch == 3 and resumed.epochs_run == 5
    assert resumed.best_val_loss == uninterrupted.best_val_loss and resumed.best_epoch == uninterrupted.best_epoch
    history = fit(*matrices(prepared), config, checkpoint=store).history  # everything is done: read back as it is
    assert [(r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in history] == [
        (r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in uninterrupted.history
    ]
    final = store.load()
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(final["best_state"][name], value)
    # One MLflow run for the whole training, killed or not: the resumed process logged into it.
    assert resumed.run_id == saved["extra"]["mlflow_run_id"]
    run = mlflow.MlflowClient().get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kfops.resumed_from_epoch"] == "3"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(resumed.run_id, "epoch_val_loss")]
    # Epoch 4 was logged before the kill and again after the resume (from epoch 3's checkpoint).
    assert sorted(steps) == [1, 2, 3, 4, 4, 5]


def test_resuming_with_another_configuration_is_refused(tmp_path, prepared, fast_config):
    store = CheckpointStore(str(tmp_path / "c"), every=2)
    config = config_of(fast_config)
    fit(*matrices(prepared), dataclasses.replace(config, epochs=2), checkpoint=store)
    assert store.load()["epoch"] == 2
    with pytest.raises(KfopsError, match=r"another configuration \(epochs: 2 then, 5 now, learning_rate"):
        fit(*matrices(prepared), dataclasses.replace(config, learning_rate=0.01), checkpoint=store)


def test_checkpoints_in_s3(prepared, fast_config, s3_env):
    store = CheckpointStore("s3://checkpoints/run-1", every=1)
    assert store.load() is None
    result = fit(*matrices(prepared), dataclasses.replace(config_of(fast_config), epochs=2), checkpoint=store)
    saved = store.load()
    assert saved["epoch"] == 2 and saved["best_val_loss"] == result.best_val_loss
    with pytest.raises(KfopsError, match="checkpoint_every must be at least 1"):
        CheckpointStore("s3://checkpoints/run-1", every=0)
