"""KFP wrappers for train: ``train`` (in the task's own pod; the GPU variant of the pipeline runs it in the CUDA
image) and ``train_distributed`` (a Kubeflow Trainer TrainJob across nodes and GPUs, same outputs)."""

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
    threshold_objective: str,
    model_family: str,
    model_params: dict,
    model_module: str,
    imported_model: str,
    experiment: str,
    mlflow_tracking_uri: str,
    tensorboard_root: str,
    model: Output[Model],
    tensorboard: Output[Artifact],
    parent_run_id: str = "",
    checkpoint_every: int = 0,
    sweep_study: str = "",
    sweep_trial_id: int = -1,
    sweep_storage: str = "",
) -> NamedTuple("TrainOutputs", [("run_id", str), ("model_uri", str), ("val_loss", float)]):
    """Train the MLP, log the MLflow run and TensorBoard events, save the pyfunc model. ``checkpoint_every`` > 0
    checkpoints beside the model output and resumes a retried task from there; ``sweep_*`` make the run a
    sweep trial that reports each epoch to its Optuna study and stops when the study prunes it.

    Args:
        parent_run_id: MLflow run to nest this run under (a sweep's); empty: none.
        checkpoint_every: Epochs between checkpoints beside the model output (a retried task resumes); 0: none.
        sweep_study: Optuna study this run reports each epoch to, as a sweep trial; empty: not a trial.
        sweep_trial_id: The trial's number in sweep_study.
        sweep_storage: The Optuna study's storage URL; empty: KFOPS_SWEEP_STORAGE.

    Returns:
        model: The trained model (MLflow pyfunc with its feature spec).
        run_id: The MLflow run.
        model_uri: The model's MLflow URI.
        val_loss: The best validation loss.
        tensorboard: The TensorBoard event files.
    """
    import logging
    import os
    from collections import namedtuple

    from kfops.components import storage
    from kfops.components.contracts import TrainConfig
    from kfops.components.train.checkpoint import CheckpointStore
    from kfops.components.train.logic import train_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig.from_parameters(locals())  # the hyperparameters among the parameters above
    checkpoint = None
    if checkpoint_every > 0:
        # The output's URI is fixed when the task starts, so a retried pod finds its predecessor's checkpoint.
        base = model.uri.replace("minio://", "s3://", 1).rstrip("/")
        checkpoint = CheckpointStore(storage.join(base.rsplit("/", 1)[0], "checkpoints"), checkpoint_every)
    tags, epoch_hook = {}, None
    if sweep_study:
        from kfops.components.study import EpochReporter

        epoch_hook = EpochReporter(sweep_storage or os.environ["KFOPS_SWEEP_STORAGE"], sweep_study, sweep_trial_id)
        tags = epoch_hook.run_tags
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
        parent_run_id=parent_run_id,
        tags=tags,
        epoch_hook=epoch_hook,
        checkpoint=checkpoint,
    )
    model.metadata.update(
        {
            "run_id": outcome.run_id,
            "model_uri": outcome.model_uri,
            "experiment_id": outcome.experiment_id,
            "best_epoch": outcome.best_epoch,
            "val_loss": outcome.best_val_loss,
            "device": outcome.device,
            "framework": {"mlp": "pytorch", "gbdt": "scikit-learn", "imported": "imported MLflow model"}.get(
                config.model_family, "user module"
            ),
            "model_family": config.model_family,
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


def train_distributed(
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
    threshold: float,
    threshold_objective: str,
    model_family: str,
    model_params: dict,
    model_module: str,
    imported_model: str,
    experiment: str,
    mlflow_tracking_uri: str,
    model: Output[Model],
    trainjob: Output[Artifact],
    image: str,
    namespace: str = "",
    num_nodes: int = 2,
    gpus_per_node: int = 1,
    procs_per_node: int = 0,
    cpu: str = "4",
    memory: str = "16Gi",
    runtime: str = "torch-distributed",
    env_secret: str = "kfops-training-env",
    checkpoint_every: int = 1,
    timeout_seconds: int = 86400,
    poll_seconds: float = 15.0,
    # literals: a lightweight component ships this function's source alone (kfp_support's GPU defaults, checked in
    # tests/pipelines/test_gpu_placement.py)
    gpu_tolerations: list = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],  # noqa: B006
    gpu_node_selector: dict = {},  # noqa: B006 - KFP defaults are declarations, never mutated
    accelerator_type: str = "nvidia.com/gpu",
) -> NamedTuple("TrainOutputs", [("run_id", str), ("model_uri", str), ("val_loss", float)]):
    """Train on ``num_nodes`` nodes x ``gpus_per_node`` GPUs: submit a Kubeflow Trainer TrainJob running the
    suite's training under torchrun (NCCL), wait for it, and hand on rank 0's MLflow run and model as ``train``
    does. The data must be in the artifact store (s3://); checkpoints go beside the model output.

    Args:
        image: Image every training node runs (the suite's CUDA image for GPUs).
        num_nodes: Training nodes (pods).
        gpus_per_node: GPUs per node; 0: CPU training (gloo).
        procs_per_node: Processes per node; 0: one per GPU (one on CPU).
        cpu: CPU request of each node.
        memory: Memory request (and limit) of each node.
        runtime: Kubeflow Trainer ClusterTrainingRuntime the TrainJob uses.
        checkpoint_every: Epochs between checkpoints beside the model output (a restarted pod resumes).

    Returns:
        model: The trained model (MLflow pyfunc with its feature spec).
        run_id: The MLflow run.
        model_uri: The model's MLflow URI.
        val_loss: The best validation loss.
        trainjob: The TrainJob submitted (JSON).
    """
    import hashlib
    import json
    from collections import namedtuple
    from pathlib import Path

    import mlflow

    from kfops.components import storage
    from kfops.components.contracts import TrainConfig
    from kfops.components.kube import connect
    from kfops.components.train.trainjob import TrainJobSpec, build_trainjob, find_run, submit_and_wait

    def s3(artifact) -> str:
        return artifact.uri.replace("minio://", "s3://", 1)

    config = TrainConfig.from_parameters(locals())  # the hyperparameters among the parameters above
    if config.model_family != "mlp":
        from kfops.components.contracts import KfopsError

        raise KfopsError(f"train_distributed: data-parallel training is the mlp's; {config.model_family} trains in "
                         "the train step")  # fmt: skip
    api = connect()
    output_dir = s3(model).rstrip("/").rsplit("/", 1)[0]
    # One name per task output: a retried step finds (and watches) the TrainJob it submitted before.
    name = "kfops-train-" + hashlib.sha256(model.uri.encode()).hexdigest()[:12]
    spec = TrainJobSpec(
        name=name,
        namespace=namespace or api.default_namespace,
        image=image,
        train_features=s3(train_features),
        validation_features=s3(validation_features),
        feature_spec=s3(feature_spec),
        raw_train=s3(raw_train),
        config=config,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        procs_per_node=procs_per_node,
        cpu=cpu,
        memory=memory,
        runtime=runtime,
        env_secret=env_secret,
        experiment=experiment,
        data_sha256=data_sha256,
        data_uri=raw_train.metadata.get("source", ""),
        checkpoint_uri=storage.join(output_dir, "checkpoints") if checkpoint_every > 0 else "",
        checkpoint_every=max(1, checkpoint_every),
        tolerations=[dict(t) for t in gpu_tolerations],
        node_selector={str(k): str(v) for k, v in gpu_node_selector.items()},
        accelerator_type=accelerator_type,
    )
    manifest = build_trainjob(spec)
    Path(trainjob.path).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    result = submit_and_wait(api, manifest, timeout_s=timeout_seconds, poll_s=poll_seconds)
    run = find_run(spec.name, experiment, mlflow_tracking_uri)
    model_uri = run.data.tags["kfops.model_uri"]
    mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=model.path)
    val_loss = float(run.data.metrics.get("val_loss", float("nan")))
    model.metadata.update(
        {
            "run_id": run.info.run_id,
            "model_uri": model_uri,
            "experiment_id": run.info.experiment_id,
            "val_loss": val_loss,
            "device": "cuda" if gpus_per_node else "cpu",
            "framework": "pytorch",
            "flavor": "mlflow.pyfunc",
            "sha256": data_sha256,
            "trainjob": f"{spec.namespace}/{spec.name}",
        }
    )
    trainjob.metadata.update({"trainjob": f"{spec.namespace}/{spec.name}", "seconds": round(result.seconds, 1)})
    print(f"TrainJob {spec.namespace}/{spec.name} complete in {result.seconds:.0f} s; MLflow run {run.info.run_id}")
    outputs = namedtuple("TrainOutputs", ["run_id", "model_uri", "val_loss"])
    return outputs(run.info.run_id, model_uri, val_loss)


train_distributed_op = component_op(train_distributed)
