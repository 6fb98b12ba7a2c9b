"""Sweep pipelines: data preparation once, one training trial, and the whole sweep on Katib.

- ``kfops-sweep-prepare``: version, validate, split and preprocess (the training pipeline's first steps, the
  same components, so a sweep and a training run on the same data share kfp.local's cache); its outputs are
  the artifacts every trial trains on.
- ``kfops-sweep-trial``: one trial: the prepared artifacts imported by URI (kfp.local takes no artifacts as
  pipeline inputs) and the ``train`` component with the trial's hyperparameters, as a child MLflow run of the
  sweep, reporting each epoch to the sweep's Optuna study. ``kfops sweep`` runs one of these per trial, each
  as its own kfp.local pipeline run: that keeps every trial an independent task (a failed or pruned trial
  fails alone), lets parallel workers be separate processes (kfp.local keeps global state, so one process runs
  one pipeline at a time), and lets a bayes worker ask for its next trial only after earlier ones finished,
  which one ParallelFor over precomputed parameters could not.
- ``kfops-katib-sweep`` (compiled to ``pipelines/compiled/katib-sweep.yaml``): prepare, then ``katib_sweep``,
  which runs the sweep as a Katib Experiment and outputs the best parameters.
"""

from typing import NamedTuple

from kfp import dsl

from kfops.components.kfp_support import DEFAULT_IMAGE, component_op
from kfops.components.sweep.component import katib_sweep
from kfops.components.train.component import train
from kfops.pipelines.parameters import DATA_PARAMETERS, TRAIN_PARAMETERS, takes
from kfops.pipelines.steps import add_data_steps, inputs_from, step

PREPARE_NAME = "kfops-sweep-prepare"
TRIAL_NAME = "kfops-sweep-trial"
KATIB_NAME = "kfops-katib-sweep"


class PreparedOutputs(NamedTuple):
    data_sha256: str
    raw_train: dsl.Dataset
    train_features: dsl.Dataset
    validation_features: dsl.Dataset
    feature_spec: dsl.Artifact


def build_prepare_pipeline(image: str = DEFAULT_IMAGE):
    @dsl.pipeline(name=PREPARE_NAME, description="Version, validate, split and preprocess data for a sweep.")
    @takes(DATA_PARAMETERS)
    def sweep_prepare(**params) -> PreparedOutputs:
        data = add_data_steps(image, params).training_inputs()
        return PreparedOutputs(**{name: data[name] for name in PreparedOutputs._fields})

    return sweep_prepare


def build_trial_pipeline(image: str = DEFAULT_IMAGE):
    train_op = component_op(train, image)

    @dsl.pipeline(name=TRIAL_NAME, description="One sweep trial: train on prepared data with one set of parameters.")
    @takes(TRAIN_PARAMETERS)
    def sweep_trial(
        train_features_uri: str,
        validation_features_uri: str,
        feature_spec_uri: str,
        raw_train_uri: str,
        data_uri: str,
        data_sha256: str,
        experiment: str,
        parent_run_id: str,
        sweep_study: str,
        sweep_trial_id: int,
        sweep_storage: str = "",
        mlflow_tracking_uri: str = "",
        tensorboard_root: str = "",
        **hyperparameters,
    ) -> float:
        params = {**locals(), **hyperparameters}  # the train step takes its inputs from these by name

        def imported(uri, cls, **metadata):
            return dsl.importer(artifact_uri=uri, artifact_class=cls, reimport=False, metadata=metadata).output

        trained = step(
            train_op,
            "train",
            **inputs_from(
                train_op,
                params,
                train_features=imported(train_features_uri, dsl.Dataset),
                validation_features=imported(validation_features_uri, dsl.Dataset),
                feature_spec=imported(feature_spec_uri, dsl.Artifact),
                raw_train=imported(raw_train_uri, dsl.Dataset, source=data_uri),
            ),
        )
        return trained.outputs["val_loss"]

    return sweep_trial


def build_katib_sweep_pipeline(image: str = DEFAULT_IMAGE):
    katib_op = component_op(katib_sweep, image)

    @dsl.pipeline(
        name=KATIB_NAME,
        description="Prepare data, then run a W&B-format sweep spec as a Katib Experiment; outputs the best "
        "training parameters.",
    )
    @takes(DATA_PARAMETERS)
    def katib_sweep_pipeline(
        sweep_spec: str,
        trials: int = 0,
        parallel: int = 0,
        namespace: str = "",
        env_secret: str = "kfops-training-env",
        trial_cpu: str = "1",
        trial_memory: str = "2Gi",
        trial_gpus: int = 0,
        experiment: str = "kfops-sweep",
        mlflow_tracking_uri: str = "",
        timeout_seconds: int = 86400,
        **data_parameters,
    ) -> str:
        """Prepare the data, then run the sweep on Katib.

        Args:
            trial_cpu: CPU request of each trial.
            trial_memory: Memory request of each trial.
            trial_gpus: GPUs (nvidia.com/gpu) per trial.

        Returns:
            Output: The best trial's training parameters as JSON.
        """
        params = {**locals(), **data_parameters}  # each step takes its inputs from these by name
        data = add_data_steps(image, params)
        # The Experiment is state outside KFP: never replay a cached result.
        swept = step(
            katib_op,
            "katib sweep",
            cache=False,
            **inputs_from(
                katib_op,
                params,
                **data.training_inputs(),
                image=image,
                cpu=trial_cpu,
                memory=trial_memory,
                gpus=trial_gpus,
            ),
        )
        return swept.outputs["best_params"]

    return katib_sweep_pipeline


sweep_prepare_pipeline = build_prepare_pipeline()
sweep_trial_pipeline = build_trial_pipeline()
katib_sweep_pipeline = build_katib_sweep_pipeline()


def run_trial_locally(request) -> None:
    """Run one sweep trial (a ``sweep.logic.TrialRequest``) as a kfp.local pipeline run in this process; raises
    when the trial fails or is pruned. ``kfops sweep`` hands this to its workers."""
    from pathlib import Path

    from kfops.components.contracts import TrainConfig
    from kfops.pipelines.local import LocalWorkspace, init_local

    init_local(LocalWorkspace(Path(request.workspace)), enable_caching=False)
    values, data = request.values, request.data
    sweep_trial_pipeline(
        train_features_uri=data.train_features,
        validation_features_uri=data.validation_features,
        feature_spec_uri=data.feature_spec,
        raw_train_uri=data.raw_train,
        data_uri=data.data_uri,
        data_sha256=data.data_sha256,
        experiment=request.experiment,
        parent_run_id=request.parent_run_id,
        sweep_study=request.study_name,
        sweep_trial_id=request.trial_id,
        sweep_storage=request.storage_url,
        tensorboard_root=request.tensorboard_root,
        **TrainConfig.from_dict(values).to_parameters(),
    )
