"""KFP wrapper for train. The GPU variant of the pipeline runs this same component in the CUDA image."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from kfops.components.kfp_support import component_op


def train(
    train_features: Input[Dataset],
    validation_features: Input[Dataset],
    feature_spec: Input[Artifact],
    raw_train: Input[Dataset],
    data_sha256: str,
    hidden_sizes: list,
    dropout: float,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    optimizer: str,
    weight_decay: float,
    class_weighting: str,
    early_stopping_patience: int,
    seed: int,
    device: str,
    threshold: float,
    experiment: str,
    mlflow_tracking_uri: str,
    tensorboard_root: str,
    model: Output[Model],
    tensorboard: Output[Artifact],
) -> NamedTuple("TrainOutputs", [("run_id", str), ("model_uri", str), ("val_loss", float)]):
    """Train the MLP, log the MLflow run and TensorBoard events, save the pyfunc model."""
    import logging
    from collections import namedtuple

    from kfops.components.contracts import TrainConfig
    from kfops.components.train.logic import train_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig.from_dict(
        dict(
            hidden_sizes=hidden_sizes,
            dropout=dropout,
            learning_rate=learning_rate,
            batch_size=batch_size,
            epochs=epochs,
            optimizer=optimizer,
            weight_decay=weight_decay,
            class_weighting=class_weighting,
            early_stopping_patience=early_stopping_patience,
            seed=seed,
            device=device,
            decision_threshold=threshold,
        )
    )
    outcome = train_model(
        train_features.path,
        validation_features.path,
        feature_spec.path,
        raw_train.path,
        config,
        model.path,
        tensorboard.path,
        experiment=experiment,
        tracking_uri=mlflow_tracking_uri,
        data_uri=raw_train.metadata.get("source", ""),
        data_sha256=data_sha256,
        tensorboard_root=tensorboard_root,
    )
    model.metadata.update(
        {
            "run_id": outcome.run_id,
            "model_uri": outcome.model_uri,
            "experiment_id": outcome.experiment_id,
            "best_epoch": outcome.best_epoch,
            "val_loss": outcome.best_val_loss,
            "device": outcome.device,
            "framework": "pytorch",
            "flavor": "mlflow.pyfunc",
            "sha256": data_sha256,
        }
    )
    tensorboard.metadata.update({"run_id": outcome.run_id, "log_dir": outcome.tensorboard_uri or tensorboard.uri})
    print(
        f"MLflow run {outcome.run_id}: best epoch {outcome.best_epoch} of {outcome.epochs_run}, "
        f"val_loss {outcome.best_val_loss:.4f}, {outcome.samples_per_second:,.0f} samples/s on {outcome.device}"
    )
    outputs = namedtuple("TrainOutputs", ["run_id", "model_uri", "val_loss"])
    return outputs(outcome.run_id, outcome.model_uri, float(outcome.best_val_loss))


train_op = component_op(train)
