"""KFP wrapper for the cluster sweep: run a sweep spec as a Katib Experiment, wait, output the best parameters."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Output

from kfops.components.kfp_support import component_op


def katib_sweep(
    train_features: Input[Dataset],
    validation_features: Input[Dataset],
    feature_spec: Input[Artifact],
    raw_train: Input[Dataset],
    data_sha256: str,
    sweep_spec: str,
    image: str,
    best: Output[Artifact],
    experiment_manifest: Output[Artifact],
    trials: int = 0,
    parallel: int = 0,
    namespace: str = "",
    env_secret: str = "kfops-training-env",
    service_account: str = "",
    cpu: str = "1",
    memory: str = "2Gi",
    gpus: int = 0,
    experiment: str = "kfops-sweep",
    mlflow_tracking_uri: str = "",
    timeout_seconds: int = 86400,
    poll_seconds: float = 15.0,
) -> NamedTuple("SweepOutputs", [("best_params", str), ("best_value", float), ("best_run_id", str)]):
    """Run ``sweep_spec`` (the YAML text of a W&B-format sweep spec) as a Katib Experiment whose trials train in
    ``image`` on these artifacts (``trials``/``parallel`` > 0 override the spec's); wait for it; write the best
    configuration (YAML) and the Experiment (YAML); output the best training parameters as JSON.

    Args:
        image: Image the trials train in (the suite's image).
        service_account: Service account of the trial pods; empty: the namespace's default.
        cpu: CPU request of each trial.
        memory: Memory request of each trial.
        gpus: GPUs (nvidia.com/gpu) per trial.

    Returns:
        best: The best trial's configuration (YAML).
        experiment_manifest: The Katib Experiment submitted (YAML).
        best_params: The best trial's training parameters as JSON.
        best_value: The best trial's objective value.
        best_run_id: The best trial's MLflow run.
    """
    import hashlib
    import json
    from collections import namedtuple
    from pathlib import Path

    import yaml

    from kfops.components.contracts import FeatureSpec
    from kfops.components.sweep.katib import TrialData, TrialPod, experiment_name
    from kfops.components.sweep.logic import run_katib_sweep, write_best
    from kfops.components.sweep.spec import parse_spec

    def s3(artifact) -> str:
        return artifact.uri.replace("minio://", "s3://", 1)

    spec = parse_spec(yaml.safe_load(sweep_spec), source="sweep_spec").with_overrides(
        trials=trials or None, parallel=parallel or None
    )
    # One name per task output: a retried step finds (and watches) the Experiment it submitted before.
    name = experiment_name(spec, suffix=hashlib.sha256(best.uri.encode()).hexdigest()[:8])
    data = TrialData(
        train_features=s3(train_features),
        validation_features=s3(validation_features),
        feature_spec=s3(feature_spec),
        raw_train=s3(raw_train),
        data_sha256=data_sha256,
        data_uri=raw_train.metadata.get("source", ""),
    )
    pod = TrialPod(
        image=image,
        env_secret=env_secret,
        service_account=service_account,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        experiment=experiment,
    )
    manifest, document = run_katib_sweep(
        spec,
        data,
        pod,
        namespace=namespace,
        name=name,
        tracking_uri=mlflow_tracking_uri,
        timeout_s=timeout_seconds,
        poll_s=poll_seconds,
        # preprocess records the task on the artifact; an older one's file says it (v1 specs are binary).
        task=feature_spec.metadata.get("task") or FeatureSpec.load(feature_spec.path).task,
    )
    Path(experiment_manifest.path).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    write_best(best.path, document)
    where = document["katib"]["experiment"]
    for artifact in (best, experiment_manifest):
        artifact.metadata.update({"katib_experiment": where, "metric": spec.metric})
    best.metadata.update({"value": document["value"], "best_run_id": document["mlflow"]["best_run_id"]})
    print(f"Katib Experiment {where}: best {spec.metric} {document['value']} with {document['searched']}")
    outputs = namedtuple("SweepOutputs", ["best_params", "best_value", "best_run_id"])
    value = document["value"]
    return outputs(
        json.dumps(document["pipeline_arguments"], sort_keys=True),
        float("nan") if value is None else float(value),
        document["mlflow"]["best_run_id"],
    )


katib_sweep_op = component_op(katib_sweep)
