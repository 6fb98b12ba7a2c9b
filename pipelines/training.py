"""The training pipeline: version, validate, split, preprocess, train, evaluate, gate, register, promote.

With ``deploy=True`` a blessed model is served instead of promoted directly: the deployment steps
(``pipelines/deployment.py``: deploy, then the canary rollout, which promotes it at its last step) run behind the
gate's blessing; with ``deploy=False`` (the default, and what a local run does) ``promote_champion`` decides.

``build_training_pipeline`` returns the pipeline function for a given image and device, so ``kfops compile``
can name the images and pick CPU or GPU training at compile time. The GPU variant also takes the placement
parameters ``gpu_tolerations``, ``gpu_node_selector`` and ``accelerator_type`` (``pipelines/placement.py``), whose
defaults are compile options. ``training_pipeline`` is the CPU pipeline with
the default images, for ``from kfops.pipelines.training import training_pipeline``. Besides its own parameters
it takes the data, training and deployment parameters (``pipelines/parameters.py``), each one a typed pipeline
parameter.
"""

from typing import NamedTuple

from kfp import dsl

from kfops.components.evaluate.component import evaluate
from kfops.components.gate.component import gate
from kfops.components.gate.logic import DEFAULT_THRESHOLDS, thresholds_json
from kfops.components.kfp_support import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE, component_op
from kfops.components.register.component import promote, register
from kfops.components.train.component import train
from kfops.pipelines.deployment import add_deployment_steps
from kfops.pipelines.parameters import (
    CANARY_NAMES,
    DATA_PARAMETERS,
    DEPLOYMENT_PARAMETERS,
    TRAIN_PARAMETERS,
    renamed,
    takes,
)
from kfops.pipelines.placement import GpuPlacement, place_on_gpu
from kfops.pipelines.steps import add_data_steps, inputs_from, step

PIPELINE_NAME = "kfops-training"


class TrainingOutputs(NamedTuple):
    data_sha256: str
    run_id: str
    model_version: str


DEFAULT_MODEL_NAME = "fraud-detector"


def build_training_pipeline(
    image: str = DEFAULT_IMAGE,
    cuda_image: str = DEFAULT_CUDA_IMAGE,
    accelerator: str = "cpu",
    gpu_count: int = 1,
    placement: GpuPlacement | None = None,
):
    """The training pipeline function; ``accelerator='gpu'`` runs training in ``cuda_image`` on ``gpu_count``
    GPUs, placed as ``placement`` says by default (its pipeline parameters; the CPU variant has none)."""
    if accelerator not in ("cpu", "gpu"):
        raise ValueError(f"accelerator must be 'cpu' or 'gpu', got {accelerator!r}")
    if placement is not None and accelerator != "gpu":
        raise ValueError("a GPU placement goes with accelerator='gpu' only")
    gpu_parameters = (placement or GpuPlacement()).parameters() if accelerator == "gpu" else ()
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
    @takes(DATA_PARAMETERS, TRAIN_PARAMETERS, renamed(DEPLOYMENT_PARAMETERS, CANARY_NAMES), gpu_parameters)
    def training_pipeline(
        thresholds: str = thresholds_json(DEFAULT_THRESHOLDS),
        model_name: str = DEFAULT_MODEL_NAME,
        promote_champion: bool = True,
        promotion_metric: str = "f1_macro",
        deploy: bool = False,
        experiment: str = "kfops-training",
        mlflow_tracking_uri: str = "",
        tensorboard_root: str = "",
        **shared,
    ) -> TrainingOutputs:
        """Data steps, train, evaluate, gate, register, then promote or deploy.

        Args:
            promote_champion: Make a blessed model the champion when it beats the current one (deploy=False).
            deploy: Serve a blessed model on KServe and roll it out as a canary (the rollout promotes it).

        Returns:
            run_id: The training's MLflow run.
            model_version: The registered model version.
        """
        params = {**locals(), **shared}  # each step takes its inputs from these by name (steps.inputs_from)
        data = add_data_steps(image, params)
        sha256 = data.versioned.outputs["sha256"]
        trained = step(train_op, "train", **inputs_from(train_op, params, **data.training_inputs()))
        trained.set_cpu_request("1").set_memory_request("2G").set_memory_limit("8G")
        if accelerator == "gpu":
            place_on_gpu(trained, params, gpu_count)
        model, test = trained.outputs["model"], data.splits.outputs["test"]
        evaluated = step(evaluate_op, "evaluate", **inputs_from(evaluate_op, params, model=model, test=test))
        # The champion moves between runs: judge against the current one, never a cached verdict.
        judged = step(
            gate_op,
            "gate",
            cache=False,
            **inputs_from(gate_op, params, evaluation=evaluated.outputs["evaluation"], model=model, test=test),
        )
        # The registry is state outside KFP: always talk to it, never replay a cached answer.
        registered = step(
            register_op,
            "register",
            cache=False,
            **inputs_from(
                register_op,
                params,
                model=model,
                evaluation=evaluated.outputs["evaluation"],
                blessing=judged.outputs["blessing"],
                data_sha256=sha256,
                pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ),
        )
        # KFP conditions, not Python comparisons (hence == True).
        with dsl.If(judged.outputs["blessed"] == True, name="blessed"):  # noqa: E712
            wanted = dsl.If(promote_champion == True, name="promote-champion")  # noqa: E712
            with dsl.If(deploy == False, name="no-deploy"), wanted:  # noqa: E712
                step(
                    promote_op,
                    "promote",
                    cache=False,
                    **inputs_from(promote_op, params, version=registered.outputs["version"], metric=promotion_metric),
                )
            # Served (deploy=True): the canary rollout promotes it at its last step, so no promotion above.
            with dsl.If(deploy == True, name="deploy"):  # noqa: E712
                canary = {name: params[ours] for name, ours in CANARY_NAMES.items()}
                add_deployment_steps(image, params, version=registered.outputs["version"], **canary)
        return TrainingOutputs(sha256, trained.outputs["run_id"], registered.outputs["version"])

    return training_pipeline


training_pipeline = build_training_pipeline()
