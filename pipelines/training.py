"""The training pipeline: version, validate, split, preprocess, train, evaluate, gate, register, promote.

With ``deploy=True`` a blessed model is served instead of promoted directly: the deployment steps
(``pipelines/deployment.py``: deploy, then the canary rollout, which promotes it at its last step) run behind the
gate's blessing; with ``deploy=False`` (the default, and what a local run does) ``promote_champion`` decides.

``build_training_pipeline`` returns the pipeline function for a given image and device, so ``kfops compile``
can name the images and pick CPU or GPU training at compile time. ``training_pipeline`` is the CPU pipeline with
the default images, for ``from kfops.pipelines.training import training_pipeline``.
"""

from typing import NamedTuple

from kfp import dsl

from kfops.components.evaluate.component import evaluate
from kfops.components.gate.component import gate
from kfops.components.gate.logic import DEFAULT_THRESHOLDS, thresholds_json
from kfops.components.ingest.component import split_data, version_data
from kfops.components.kfp_support import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE, component_op
from kfops.components.preprocess.component import preprocess
from kfops.components.register.component import promote, register
from kfops.components.train.component import train
from kfops.components.validate.component import validate_data
from kfops.pipelines.deployment import add_deployment_steps

PIPELINE_NAME = "kfops-training"


class TrainingOutputs(NamedTuple):
    data_sha256: str
    run_id: str
    model_version: str


DEFAULT_TARGET = "is_fraud"
DEFAULT_MODEL_NAME = "fraud-detector"
DEFAULT_ARTIFACT_STORE = "s3://kfops"


def build_training_pipeline(
    image: str = DEFAULT_IMAGE, cuda_image: str = DEFAULT_CUDA_IMAGE, accelerator: str = "cpu", gpu_count: int = 1
):
    """The training pipeline function; ``accelerator='gpu'`` runs training in ``cuda_image`` on a GPU."""
    if accelerator not in ("cpu", "gpu"):
        raise ValueError(f"accelerator must be 'cpu' or 'gpu', got {accelerator!r}")
    version_op = component_op(version_data, image)
    validate_op = component_op(validate_data, image)
    split_op = component_op(split_data, image)
    preprocess_op = component_op(preprocess, image)
    train_op = component_op(train, cuda_image if accelerator == "gpu" else image)
    evaluate_op = component_op(evaluate, image)
    gate_op = component_op(gate, image)
    register_op = component_op(register, image)
    promote_op = component_op(promote, image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Version and validate tabular data, train and evaluate a classifier, bless it against "
        "thresholds and the champion, register it in MLflow and promote it when blessed.",
    )
    def training_pipeline(
        data_uri: str = "",
        data_version: str = "",
        target: str = DEFAULT_TARGET,
        numeric_features: list = [],  # noqa: B006 - KFP pipeline defaults are declarations, never mutated
        categorical_features: list = [],  # noqa: B006
        drop_columns: list = [],  # noqa: B006
        time_column: str = "",
        split_by_time: bool = False,
        positive_class: str = "",
        expectation_suite: str = "",
        validation_mode: str = "fail",
        max_missing: float = 0.05,
        validation_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 42,
        max_categories: int = 50,
        min_frequency: int = 5,
        hidden_sizes: list = [64, 32],  # noqa: B006
        dropout: float = 0.1,
        learning_rate: float = 0.003,
        batch_size: int = 512,
        epochs: int = 12,
        optimizer: str = "adamw",
        weight_decay: float = 0.0001,
        class_weighting: str = "none",
        early_stopping_patience: int = 3,
        seed: int = 42,
        device: str = "auto",
        threshold: float = 0.5,
        thresholds: str = thresholds_json(DEFAULT_THRESHOLDS),
        model_name: str = DEFAULT_MODEL_NAME,
        promote_champion: bool = True,
        promotion_metric: str = "f1_macro",
        deploy: bool = False,
        isvc_name: str = "",
        namespace: str = "",
        deployment_mode: str = "knative",
        canary_percent: int = 10,
        service_account: str = "kfops-model-reader",
        canary_steps: list = [10, 25, 50, 100],  # noqa: B006
        canary_window_seconds: float = 300.0,
        prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090",
        canary_max_error_rate: float = 0.01,
        canary_max_p99_ratio: float = 1.5,
        canary_min_requests: int = 50,
        experiment: str = "kfops-training",
        artifact_store: str = DEFAULT_ARTIFACT_STORE,
        mlflow_tracking_uri: str = "",
        tensorboard_root: str = "",
    ) -> TrainingOutputs:
        versioned = version_op(
            data_uri=data_uri,
            data_version=data_version,
            artifact_store=artifact_store,
            target=target,
            numeric_features=numeric_features,
            categorical_features=categorical_features,
            drop_columns=drop_columns,
            time_column=time_column,
            positive_class=positive_class,
            expectation_suite=expectation_suite,
        ).set_display_name("version data")
        # Always read the data: the sha256 it hands on is what makes the later steps' cache correct.
        versioned.set_caching_options(False)
        sha256 = versioned.outputs["sha256"]
        validated = validate_op(
            data_sha256=sha256,
            artifact_store=artifact_store,
            target=target,
            expectation_suite=expectation_suite,
            suite_sha256=versioned.outputs["suite_sha256"],
            mode=validation_mode,
            max_missing=max_missing,
        ).set_display_name("validate")
        splits = split_op(
            data_sha256=sha256,
            artifact_store=artifact_store,
            target=target,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            seed=split_seed,
            time_column=time_column,
            split_by_time=split_by_time,
        ).set_display_name("split")
        splits.after(validated)  # nothing trains on data that failed validation
        prepared = preprocess_op(
            train=splits.outputs["train"],
            validation=splits.outputs["validation"],
            test=splits.outputs["test"],
            schema_json=versioned.outputs["schema_json"],
            data_sha256=sha256,
            max_categories=max_categories,
            min_frequency=min_frequency,
        ).set_display_name("preprocess")
        trained = train_op(
            train_features=prepared.outputs["train_features"],
            validation_features=prepared.outputs["validation_features"],
            feature_spec=prepared.outputs["feature_spec"],
            raw_train=splits.outputs["train"],
            data_sha256=sha256,
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
            threshold=threshold,
            experiment=experiment,
            mlflow_tracking_uri=mlflow_tracking_uri,
            tensorboard_root=tensorboard_root,
        ).set_display_name("train")
        trained.set_cpu_request("1").set_memory_request("2G").set_memory_limit("8G")
        if accelerator == "gpu":
            trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count)
        evaluated = evaluate_op(
            model=trained.outputs["model"],
            test=splits.outputs["test"],
            mlflow_tracking_uri=mlflow_tracking_uri,
        ).set_display_name("evaluate")
        judged = gate_op(
            evaluation=evaluated.outputs["evaluation"],
            model=trained.outputs["model"],
            test=splits.outputs["test"],
            thresholds=thresholds,
            model_name=model_name,
            mlflow_tracking_uri=mlflow_tracking_uri,
        ).set_display_name("gate")
        # The champion moves between runs: judge against the current one, never a cached verdict.
        judged.set_caching_options(False)
        registered = register_op(
            model=trained.outputs["model"],
            evaluation=evaluated.outputs["evaluation"],
            blessing=judged.outputs["blessing"],
            model_name=model_name,
            data_sha256=sha256,
            pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            mlflow_tracking_uri=mlflow_tracking_uri,
        ).set_display_name("register")
        # The registry is state outside KFP: always talk to it, never replay a cached answer.
        registered.set_caching_options(False)
        tasks = [versioned, validated, splits, prepared, trained, evaluated, judged, registered]
        # KFP conditions, not Python comparisons (hence == True).
        with dsl.If(judged.outputs["blessed"] == True, name="blessed"):  # noqa: E712
            wanted = dsl.If(promote_champion == True, name="promote-champion")  # noqa: E712
            with dsl.If(deploy == False, name="no-deploy"), wanted:  # noqa: E712
                promoted = promote_op(
                    model_name=model_name,
                    version=registered.outputs["version"],
                    metric=promotion_metric,
                    mlflow_tracking_uri=mlflow_tracking_uri,
                ).set_display_name("promote")
                promoted.set_caching_options(False)
                tasks.append(promoted)
            # Served (deploy=True): the canary rollout promotes it at its last step, so no promotion above.
            with dsl.If(deploy == True, name="deploy"):  # noqa: E712
                add_deployment_steps(
                    image,
                    model_name=model_name,
                    version=registered.outputs["version"],
                    isvc_name=isvc_name,
                    namespace=namespace,
                    deployment_mode=deployment_mode,
                    canary_percent=canary_percent,
                    service_account=service_account,
                    steps=canary_steps,
                    window_seconds=canary_window_seconds,
                    prometheus_url=prometheus_url,
                    max_error_rate=canary_max_error_rate,
                    max_p99_ratio=canary_max_p99_ratio,
                    min_requests=canary_min_requests,
                    promotion_metric=promotion_metric,
                    mlflow_tracking_uri=mlflow_tracking_uri,
                )
        for task in tasks:
            task.set_env_variable("KFOPS_IMAGE", cuda_image if task is trained and accelerator == "gpu" else image)
        return TrainingOutputs(sha256, trained.outputs["run_id"], registered.outputs["version"])

    return training_pipeline


training_pipeline = build_training_pipeline()
