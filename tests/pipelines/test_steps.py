"""The pipelines' shared wiring: parameter groups (pipelines/parameters.py) and step helpers (pipelines/steps.py)."""

# No `from __future__ import annotations`: KFP reads a pipeline's annotations as types, not strings.
import inspect

import pytest
from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineParameterChannel

from kfops.components.features.component import materialize
from kfops.components.kfp_support import component_op
from kfops.pipelines.parameters import CANARY_NAMES, DATA_PARAMETERS, DEPLOYMENT_PARAMETERS, TRAIN_PARAMETERS, takes
from kfops.pipelines.steps import inputs_from


def _pipelines_taking_the_data_parameters():
    from kfops.pipelines.sweep import katib_sweep_pipeline, sweep_prepare_pipeline
    from kfops.pipelines.training import training_pipeline

    return [training_pipeline, sweep_prepare_pipeline, katib_sweep_pipeline]


@pytest.mark.parametrize("index", range(3))
def test_each_data_pipeline_takes_every_data_parameter_with_its_default(index):
    pipeline = _pipelines_taking_the_data_parameters()[index]
    inputs = pipeline.component_spec.inputs
    for parameter in DATA_PARAMETERS:
        assert parameter.name in inputs, (pipeline.name, parameter.name)
        assert inputs[parameter.name].default == parameter.default, (pipeline.name, parameter.name)


@pytest.mark.parametrize("which", ["deployment", "training"])
def test_the_deployment_parameters_are_taken_with_their_defaults(which):
    from kfops.pipelines.deployment import deployment_pipeline
    from kfops.pipelines.training import training_pipeline

    pipeline, names = {
        "deployment": (deployment_pipeline, {}),
        "training": (training_pipeline, CANARY_NAMES),  # the rollout's parameters named canary_*
    }[which]
    inputs = pipeline.component_spec.inputs
    for parameter in DEPLOYMENT_PARAMETERS:
        name = names.get(parameter.name, parameter.name)
        assert name in inputs and inputs[name].default == parameter.default, (which, name)


def test_the_train_parameters_are_typed_as_kfp_wants():
    assert {p.annotation for p in TRAIN_PARAMETERS} <= {list, dict, float, int, str}
    assert next(p for p in TRAIN_PARAMETERS if p.name == "hidden_sizes").annotation is list
    assert next(p for p in TRAIN_PARAMETERS if p.name == "model_params").annotation is dict  # a KFP struct


def test_takes_appends_the_groups_and_hands_them_to_the_body():
    received = {}

    @takes(DATA_PARAMETERS)
    def pipeline(model_name: str = "m", **data):
        received.update(model_name=model_name, **data)

    names = list(inspect.signature(pipeline).parameters)
    # the common ones first (parameters.COMMON_FIRST), then the rest as declared
    first = ["data_uri", "data_version", "target", "model_name"]
    assert names == [*first, *(p.name for p in DATA_PARAMETERS if p.name not in first)]
    pipeline("s3://data.csv", "", "y", "x")  # KFP calls a pipeline function positionally, in signature order
    assert received["model_name"] == "x" and received["data_uri"] == "s3://data.csv" and received["target"] == "y"
    assert received["split_seed"] == 42  # a group's default


def test_takes_refuses_a_parameter_declared_twice():
    with pytest.raises(TypeError, match=r"declares \['target'\]"):

        @takes(DATA_PARAMETERS)
        def pipeline(target: str = "y", **data):
            pass


def test_inputs_from_passes_pipeline_parameters_by_name_and_given_values_first():
    op = component_op(materialize)
    repo = PipelineParameterChannel(name="feature_repo", channel_type="String")
    views = PipelineParameterChannel(name="feature_views", channel_type="List")
    other = PipelineParameterChannel(name="other", channel_type="String")
    params = {"feature_repo": repo, "feature_views": views, "other": other, "artifact_store": "s3://plain-value"}
    arguments = inputs_from(op, params, feature_views=["v"], data_sha256="abc")
    # "other" is no input of materialize; artifact_store is a plain Python value, not a pipeline parameter
    assert arguments == {"feature_repo": repo, "feature_views": ["v"], "data_sha256": "abc"}


def test_a_step_records_the_image_its_component_runs_in():
    from kfops.components.register.component import promote
    from kfops.pipelines.steps import step

    op = component_op(promote, "registry.example.com/kfops:1")

    @dsl.pipeline(name="one-step")
    def pipeline(model_name: str = "m", mlflow_tracking_uri: str = ""):
        step(op, "promote", cache=False, **inputs_from(op, locals(), version="3", metric="f1"))

    task = next(iter(pipeline.pipeline_spec.root.dag.tasks.values()))
    assert task.task_info.name == "promote" and not task.caching_options.enable_cache
    assert set(task.inputs.parameters) == {"model_name", "mlflow_tracking_uri", "version", "metric"}
    executor = next(iter(pipeline.pipeline_spec.deployment_spec["executors"].values()))
    assert {"name": "KFOPS_IMAGE", "value": "registry.example.com/kfops:1"} in executor["container"]["env"]
