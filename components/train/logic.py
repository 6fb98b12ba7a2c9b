"""Train: fit the MLP on the preprocessed splits and record everything in MLflow and TensorBoard.

One MLflow run per training: parameters, tags that pin the data and code it came from, per-epoch losses and
validation metrics, the resolved configuration, TensorBoard event files, and the model as one pyfunc (torch
module plus feature spec) that everything downstream loads. The best epoch's validation metrics are logged as
``val_<metric>`` (``val_loss``, ``val_accuracy``, ``val_f1_macro``, ...): what sweeps optimise.

A sweep trial is a child run (``parent_run_id``); a checkpointed training that resumes after a restart logs into
the run it started (its id is in the checkpoint). Data-parallel (torchrun), only rank 0 talks to MLflow and
TensorBoard and saves the model; the other ranks train and return.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from kfops.components import retry, storage
from kfops.components.contracts import (
    MODEL_FAMILY_GBDT,
    MODEL_FAMILY_IMPORTED,
    MODEL_FAMILY_MLP,
    MODEL_FAMILY_MODULE,
    PROBABILITY_PREFIX,
    TASK_BINARY,
    TASK_MULTICLASS,
    TASK_REGRESSION,
    FeatureSpec,
    KfopsError,
    TrainConfig,
)
from kfops.components.tracking import artifact_store_errors, ensure_experiment, set_tracking

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
DEFAULT_EXPERIMENT = "kfops-training"
# Runtime requirements of the pyfunc model, listed explicitly: inferring them costs 10-14 s per log.
MODEL_PIP_PACKAGES = ("torch", "numpy", "pandas", "mlflow", "cloudpickle")
VERSION_TAG_PACKAGES = ("kfops", "torch", "mlflow", "kfp", "pandas", "numpy")


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    model_uri: str  # models:/m-... (MLflow 3 logged model)
    model_id: str
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    device: str
    samples_per_second: float
    tensorboard_uri: str
    val_metrics: dict[str, float] = field(default_factory=dict)  # the best epoch's val_* metrics
    resumed_from_epoch: int = 0
    world_size: int = 1


def git_commit() -> str:
    if os.environ.get("KFOPS_GIT_COMMIT"):
        return os.environ["KFOPS_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names=VERSION_TAG_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def model_signature(spec: FeatureSpec):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [ColSpec("double" if c.kind == "numeric" else "string", c.name, required=False) for c in spec.columns]
    )
    outputs = Schema([ColSpec(kind, name) for name, kind in output_columns(spec)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def output_columns(spec: FeatureSpec) -> list[tuple[str, str]]:
    """The model's output columns and their MLflow types, per task (pyfunc.TabularModel.predict writes them)."""
    if spec.task == TASK_REGRESSION:
        return [("prediction", "double")]
    columns = [("prediction", "string"), ("probability", "double")]
    if spec.task == TASK_MULTICLASS:
        columns += [(PROBABILITY_PREFIX + label, "double") for label in spec.labels]
    return columns


def input_example(spec: FeatureSpec, raw_rows):
    """Two raw rows (a 1-row example would pin the batch size for some flavours), typed as the signature."""
    from kfops.components.transform import model_input_frame

    return model_input_frame(spec, raw_rows.head(2), source="input example").reset_index(drop=True)


def validation_metrics(y_val, threshold: float, spec: FeatureSpec | None = None):
    """The per-epoch hook adding the task's metrics on the validation split (``val_f1_macro``, ``val_rmse``, ...);
    accuracy stays ``fit``'s ``val_accuracy`` (binary: at 0.5), the others use the model's decision threshold.
    Regression metrics are in the target's own units (``fit`` sees the standardised target)."""
    from kfops.components.scoring import task_metrics

    task = spec.task if spec is not None else TASK_BINARY

    def metrics(outputs) -> dict[str, float]:
        if task == TASK_REGRESSION:
            truth = y_val * spec.target_std + spec.target_mean
            values = task_metrics(task, truth, outputs * spec.target_std + spec.target_mean)
        else:
            values = task_metrics(task, y_val, outputs, threshold)
        return {f"val_{name}": float(v) for name, v in values.items() if name != "accuracy"}

    return metrics


def validation_probability(model, x_val, config: TrainConfig, spec: FeatureSpec | None = None):
    """A binary model's positive-class probability on the validation rows, for any family."""
    if config.model_family == MODEL_FAMILY_MODULE:
        from kfops.components.train.user_module import module_scores

        return module_scores(model, x_val, spec)
    if config.model_family == MODEL_FAMILY_GBDT:
        from kfops.components.train.gbdt import class_scores

        return class_scores(model, x_val, TASK_BINARY, 1)
    import torch

    from kfops.components.train.loop import predict_logits

    device = next(model.parameters()).device
    features = torch.as_tensor(x_val, dtype=torch.float32, device=device)
    return torch.sigmoid(predict_logits(model, features, device.type)).cpu().numpy()


def decision_threshold(model, x_val, y_val, config: TrainConfig, spec: FeatureSpec | None = None) -> float:
    """The model's decision threshold: ``config.decision_threshold`` when fixed, else the one that best meets
    ``config.threshold_objective`` on the validation split (scoring.choose_threshold)."""
    if config.threshold_objective == "fixed":
        return config.decision_threshold
    from kfops.components.scoring import choose_threshold

    probability = validation_probability(model, x_val, config, spec)
    if y_val.min() == y_val.max():
        log.warning("validation rows hold one class: the decision threshold stays %g", config.decision_threshold)
        return config.decision_threshold
    threshold = choose_threshold(y_val, probability, config.threshold_objective)
    log.info("decision threshold %.4f (%s on %d validation rows)", threshold, config.threshold_objective, len(y_val))
    return threshold


def pip_requirements(family: str = MODEL_FAMILY_MLP) -> list[str]:
    names = MODEL_PIP_PACKAGES + (("scikit-learn",) if family == MODEL_FAMILY_GBDT else ())
    versions = package_versions(names)
    return [f"{name}=={version}" for name, version in versions.items() if version != "not installed"]


def train_model(
    train_path: str,
    validation_path: str,
    spec_path: str,
    raw_example_path: str,
    config: TrainConfig,
    model_dir: str,
    tensorboard_dir: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str = "",
    data_uri: str = "",
    data_sha256: str = "",
    image: str = "",
    tensorboard_root: str = "",
    run_name: str = "",
    parent_run_id: str = "",
    tags: dict[str, str] | None = None,
    epoch_hook: Callable[[dict[str, float]], None] | None = None,
    checkpoint=None,
) -> TrainOutcome:
    """Train, log to MLflow and TensorBoard, and save the pyfunc model to ``model_dir``.

    ``parent_run_id`` makes the run a child (a sweep trial); ``tags`` are added to the run; ``epoch_hook`` gets
    each epoch's row after it is logged and may raise ``loop.StopTraining`` (the run then ends KILLED and the
    exception goes on); ``checkpoint`` (a ``checkpoint.CheckpointStore``) checkpoints and resumes."""
    import mlflow
    import pandas as pd
    from torch.utils.tensorboard import SummaryWriter

    from kfops.components.contracts import StopTraining
    from kfops.components.train import distributed
    from kfops.components.train.loop import fit
    from kfops.components.train.model_code import write_model_code
    from kfops.components.transform import load_matrix

    config.check()
    spec = FeatureSpec.load(spec_path)
    x_train, y_train = load_matrix(train_path)
    x_val, y_val = load_matrix(validation_path)
    y_train_raw, y_val_raw = y_train, y_val  # the user's module sees the target in its own units
    if spec.task == TASK_REGRESSION:
        # the network learns the standardised target; the model turns its outputs back (pyfunc)
        y_train = (y_train - spec.target_mean) / spec.target_std
        y_val = (y_val - spec.target_mean) / spec.target_std
    if x_train.shape[1] != spec.input_width:
        raise KfopsError(
            f"train: features in {train_path} have {x_train.shape[1]} columns but the feature spec "
            f"{spec_path} describes {spec.input_width}"
        )
    resume = checkpoint.load() if checkpoint is not None else None
    epoch_metrics = validation_metrics(y_val, config.decision_threshold, spec)
    shape = {"task": spec.task, "outputs": spec.output_width}
    dist_ctx = distributed.current()
    trees = config.model_family == MODEL_FAMILY_GBDT
    # downloads (an s3:// module, an imported model) live here; removed when this call's frame lets go of it
    scratch = tempfile.TemporaryDirectory(prefix="kfops-train-")
    module_file = _module_file(config.model_module, scratch.name) if config.model_family == MODEL_FAMILY_MODULE else ""
    if config.model_family != MODEL_FAMILY_MLP and (dist_ctx is not None or checkpoint is not None):
        raise KfopsError(
            f"train: {config.model_family} trains in one process and needs no checkpoints; use it without torchrun"
        )
    extra_requirements: list[str] = []
    if dist_ctx is not None and not dist_ctx.is_main:
        # Rank 0 records the run; this rank trains its share and, for a checkpoint, hands over its RNG state.
        result = fit(
            x_train,
            y_train,
            x_val,
            y_val,
            config,
            epoch_metrics=epoch_metrics,
            checkpoint=checkpoint,
            resume=resume,
            **shape,
        )
        return TrainOutcome(
            run_id="",
            experiment_id="",
            model_uri="",
            model_id="",
            best_epoch=result.best_epoch,
            best_val_loss=result.best_val_loss,
            epochs_run=len(result.history),
            device=result.device,
            samples_per_second=result.samples_per_second,
            tensorboard_uri="",
            world_size=result.world_size,
        )
    set_tracking(tracking_uri)
    experiment_id = ensure_experiment(experiment)
    example = input_example(spec, pd.read_parquet(raw_example_path, columns=spec.feature_names))
    versions = package_versions()

    resumed_run = _resumable_run((resume or {}).get("extra", {}).get("mlflow_run_id", ""))
    start = {"run_id": resumed_run} if resumed_run else {"experiment_id": experiment_id, "run_name": run_name or None}
    if parent_run_id and not resumed_run:
        start["parent_run_id"] = parent_run_id
    with mlflow.start_run(**start) as run:
        run_id = run.info.run_id
        if tags:
            mlflow.set_tags(tags)
        mlflow.set_tags(
            {
                "kfops.stage": "train",
                "kfops.data_uri": data_uri,
                "kfops.data_sha256": data_sha256,
                "kfops.git_commit": git_commit(),
                "kfops.image": image or os.environ.get("KFOPS_IMAGE", "local"),
                "kfops.seed": str(config.seed),
                "kfops.python": platform.python_version(),
                **{f"kfops.version.{name}": version for name, version in versions.items()},
                "kfops.model_family": config.model_family,
                "mlflow.note.content": (
                    f"{_describe(config)} ({spec.task}) on data {data_sha256[:12]} from {data_uri}"
                ),
            }
        )
        params = {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in config.to_dict().items()}
        params.update(
            {
                "train_rows": len(x_train),
                "validation_rows": len(x_val),
                "input_width": spec.input_width,
                "numeric_features": len([c for c in spec.columns if c.kind == "numeric"]),
                "categorical_features": len([c for c in spec.columns if c.kind == "categorical"]),
                "positive_class": spec.positive_class,
                "task": spec.task,
                "data_sha256": data_sha256,
            }
        )
        if not resumed_run:  # a resumed run logged its parameters when it started
            mlflow.log_params(params)

        Path(tensorboard_dir).mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(log_dir=tensorboard_dir)

        def on_epoch(row: dict[str, float]) -> None:
            step = int(row["epoch"])
            metrics = {f"epoch_{k}": v for k, v in row.items() if k != "epoch"}
            mlflow.log_metrics(metrics, step=step)
            for name, value in row.items():
                if name != "epoch":
                    writer.add_scalar(name.replace("_", "/", 1), value, step)
            quality = (
                f"val_accuracy {row['val_accuracy']:.4f}"
                if "val_accuracy" in row
                else f"val_rmse {row.get('val_rmse', float('nan')):.4f}"
            )
            log.info("epoch %d: train_loss %.4f val_loss %.4f %s", step, row["train_loss"], row["val_loss"], quality)
            if epoch_hook is not None:
                epoch_hook(row)

        try:
            if config.model_family == MODEL_FAMILY_IMPORTED:
                from kfops.components.train.imported import fit_imported

                raw = pd.read_parquet(raw_example_path, columns=[*spec.feature_names, spec.target])
                imported_dir = Path(scratch.name, "imported")
                result = fit_imported(config.imported_model, imported_dir, raw, spec, config.decision_threshold)
                _log_history(run_id, result.history, writer)
                mlflow.set_tags({"kfops.imported_model": config.imported_model, "kfops.val_loss_rows": "train split"})
                extra_requirements = _requirements_of(result.model[0])
            elif module_file:
                from kfops.components.train.user_module import fit_module

                result, extra_requirements = fit_module(
                    module_file, x_train, y_train_raw, x_val, y_val_raw, spec, config.model_params, epoch_metrics
                )
                _log_history(run_id, result.history, writer)
                mlflow.set_tag("kfops.model_module", config.model_module)
            elif trees:
                from kfops.components.train.gbdt import fit_gbdt

                result = fit_gbdt(x_train, y_train, x_val, y_val, config, epoch_metrics=epoch_metrics, **shape)
                _log_history(run_id, result.history, writer)
                if epoch_hook is not None:
                    epoch_hook(result.history[-1])
            else:
                result = fit(
                    x_train,
                    y_train,
                    x_val,
                    y_val,
                    config,
                    on_epoch=on_epoch,
                    epoch_metrics=epoch_metrics,
                    checkpoint=checkpoint,
                    resume=resume,
                    checkpoint_extra={"mlflow_run_id": run_id},
                    **shape,
                )
        except StopTraining as stopped:
            mlflow.set_tag("kfops.stopped", str(stopped))
            mlflow.end_run(status="KILLED")
            raise
        finally:
            writer.close()
        # a binary classifier's decision threshold; the other tasks have none (argmax, or the value itself)
        # (an imported model keeps the threshold it is given: it scores raw rows, not the validation matrix)
        threshold = 0.5
        if spec.task == TASK_BINARY:
            imported = config.model_family == MODEL_FAMILY_IMPORTED
            threshold = (
                config.decision_threshold if imported else decision_threshold(result.model, x_val, y_val, config, spec)
            )
        mlflow.set_tag("kfops.task", spec.task)
        if spec.task == TASK_BINARY:
            mlflow.log_metric("decision_threshold", threshold)
            mlflow.set_tag("kfops.threshold_objective", config.threshold_objective)
        best_row = result.history[result.best_epoch - 1] if result.best_epoch else {}
        val_metrics = {k: float(v) for k, v in best_row.items() if k.startswith("val_")}
        val_metrics["val_loss"] = result.best_val_loss
        mlflow.log_metrics(
            {
                **val_metrics,
                "best_epoch": result.best_epoch,
                "train_samples_per_second": result.samples_per_second,
                "train_seconds": result.train_seconds,
            }
        )
        mlflow.set_tags(
            {
                "kfops.device": result.device,
                "kfops.cuda_graphs": str(result.cuda_graphs),
                "kfops.world_size": str(result.world_size),
                **({"kfops.resumed_from_epoch": str(result.resumed_from_epoch)} if result.resumed_from_epoch else {}),
            }
        )
        resolved = {
            "train": config.to_dict(),
            "decision_threshold": threshold,
            "device": result.device,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "data": {"uri": data_uri, "sha256": data_sha256},
            "features": {
                "numeric": [c.name for c in spec.columns if c.kind == "numeric"],
                "categorical": [c.name for c in spec.columns if c.kind == "categorical"],
                "target": spec.target,
                "task": spec.task,
                "positive_class": spec.positive_class,
                "classes": spec.labels,
            },
            "history": result.history,
        }
        with artifact_store_errors("train: logging the run's config and TensorBoard files"):
            mlflow.log_dict(resolved, "config/resolved_config.json")
            mlflow.log_artifacts(tensorboard_dir, "tensorboard")
        tensorboard_uri = ""
        if tensorboard_root:
            tensorboard_uri = storage.join(tensorboard_root, run_id)
            storage.upload_dir(tensorboard_dir, tensorboard_uri)
            mlflow.set_tag("kfops.tensorboard_uri", tensorboard_uri)

        with tempfile.TemporaryDirectory() as tmp:
            python_model, artifacts = _model_files(tmp, result.model, spec, config, threshold, module_file)
            spec_copy = Path(tmp, "feature_spec.json")
            shutil.copyfile(spec_path, spec_copy)
            artifacts["feature_spec"] = str(spec_copy)
            code = write_model_code(Path(tmp, "code"))  # the model loads with no kfops install (model_code.py)
            model_kwargs = dict(
                python_model=python_model,
                code_paths=[str(code)],
                artifacts=artifacts,
                signature=model_signature(spec),
                input_example=example,
                pip_requirements=pip_requirements(config.model_family) + extra_requirements,
            )
            if Path(model_dir).exists():
                shutil.rmtree(model_dir)
            # Saving validates the input example by loading the model, which puts its code on sys.path: taken off
            # again, so nothing this process starts later imports the model's copy of kfops (model_code.py).
            path_before = list(sys.path)
            try:
                mlflow.pyfunc.save_model(path=model_dir, **model_kwargs)
                with artifact_store_errors("train: uploading the model"):
                    info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, **model_kwargs)
            finally:
                sys.path[:] = path_before
        mlflow.set_tag("kfops.model_uri", info.model_uri)
        mlflow.log_metric("client_retries", retry.total())  # MLflow and S3 retries this step needed (retry.py)

    return TrainOutcome(
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=info.model_uri,
        model_id=info.model_id or "",
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss,
        epochs_run=len(result.history),
        device=result.device,
        samples_per_second=result.samples_per_second,
        tensorboard_uri=tensorboard_uri,
        val_metrics=val_metrics,
        resumed_from_epoch=result.resumed_from_epoch,
        world_size=result.world_size,
    )


def _describe(config: TrainConfig) -> str:
    if config.model_family == MODEL_FAMILY_IMPORTED:
        return f"the imported model {config.imported_model}"
    if config.model_family == MODEL_FAMILY_MODULE:
        return f"the model of {config.model_module}"
    if config.model_family == MODEL_FAMILY_GBDT:
        params = config.gbdt()
        return f"gradient-boosted trees ({params.max_leaf_nodes} leaves, learning rate {params.learning_rate})"
    return f"MLP {config.hidden_sizes}"


def _module_file(uri: str, directory: str) -> str:
    """The user's module as a local file (an s3:// one downloaded next to the task's temporary files)."""
    if not storage.is_s3(uri):
        return uri
    local = Path(directory, "module") / uri.rstrip("/").rsplit("/", 1)[-1]
    return str(storage.download_to(uri, local))


def _requirements_of(model_dir: str | Path) -> list[str]:
    """An imported model's own pip requirements (its requirements.txt), so the wrapped model carries them."""
    path = Path(model_dir, "requirements.txt")
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "-")) and not line.startswith("mlflow")]


def _model_files(directory: str, model, spec: FeatureSpec, config: TrainConfig, threshold: float, module_file=""):
    """The family's pyfunc class and its artifact files (written to ``directory``), but the feature spec."""
    from kfops.components.train.pyfunc import (
        ImportedModel,
        ModuleModel,
        TabularClassifier,
        TreeModel,
        save_imported,
        save_module_model,
        save_network,
        save_trees,
    )

    if config.model_family == MODEL_FAMILY_IMPORTED:
        local, how, columns = model
        return ImportedModel(), save_imported(directory, local, config.imported_model, how, columns, threshold)
    if module_file:
        return ModuleModel(), save_module_model(directory, model, module_file, threshold=threshold)

    if config.model_family == MODEL_FAMILY_GBDT:
        estimator, trees_config = save_trees(directory, model, threshold=threshold, outputs=spec.output_width)
        return TreeModel(), {"estimator": str(estimator), "trees_config": str(trees_config)}
    weights, network_config = save_network(
        directory,
        model,
        spec.input_width,
        config.hidden_sizes,
        config.dropout,
        threshold=threshold,
        outputs=spec.output_width,
    )
    return TabularClassifier(), {"network": str(weights), "network_config": str(network_config)}


def _log_history(run_id: str, history: list[dict[str, float]], writer) -> None:
    """Boosting iterations as epoch metrics, in one batch (hundreds of rows; one call each would take seconds)."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"epoch_{name}", float(value), now, int(row["epoch"]))
        for row in history
        for name, value in row.items()
        if name != "epoch"
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for row in history:
        for name, value in row.items():
            if name != "epoch":
                writer.add_scalar(name.replace("_", "/", 1), value, int(row["epoch"]))


def _resumable_run(run_id: str) -> str:
    """``run_id`` if that MLflow run exists here (a checkpoint's run, to log into again), else ``""``."""
    if not run_id:
        return ""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        log.warning("the checkpoint's MLflow run %s is not in this tracking store: starting a new run", run_id)
        return ""
    return run_id
