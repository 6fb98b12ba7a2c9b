"""How the suite's pipelines add their steps, written once for all of them.

- ``step``: call a component as a named step that records the image it runs in (``KFOPS_IMAGE``, which each
  MLflow run tags), with the cache off for a step that reads state outside KFP.
- ``inputs_from``: a step's arguments from the pipeline's parameters of the same names. Pipelines pass most of
  their parameters on unchanged; naming each one twice (``target=target``) is where wiring drifts.
- ``add_data_steps``: version -> validate -> split -> preprocess, the first steps of the training pipeline and of
  both sweep pipelines, so a sweep and a training run on the same data share the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from kfops.components.ingest.component import split_data, version_data
from kfops.components.kfp_support import component_op
from kfops.components.preprocess.component import preprocess
from kfops.components.validate.component import validate_data


def inputs_from(component, params: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """The arguments for ``component``: ``given``, and for each other input of it a pipeline parameter of the same
    name in ``params`` (the pipeline's ``locals()``). Only pipeline parameters (channels) are taken, so a plain
    Python value the pipeline body also sees (an image name, say) is never passed on by accident."""
    inputs = component.component_spec.inputs or {}
    passed = {
        name: value
        for name, value in params.items()
        if name in inputs and name not in given and isinstance(value, PipelineChannel)
    }
    return {**passed, **given}


def step(component, display_name: str, *, cache: bool = True, **arguments: Any) -> dsl.PipelineTask:
    """``component(**arguments)`` as a step named ``display_name``, with ``KFOPS_IMAGE`` set to the image it runs
    in. ``cache=False`` for a step whose answer depends on state outside KFP (the registry, a cluster, live data):
    such a step must always run, never replay a cached answer."""
    task = component(**arguments).set_display_name(display_name)
    if not cache:
        task.set_caching_options(False)
    task.set_env_variable("KFOPS_IMAGE", component.component_spec.implementation.container.image)
    return task


class DataSteps(NamedTuple):
    versioned: dsl.PipelineTask
    validated: dsl.PipelineTask
    splits: dsl.PipelineTask
    prepared: dsl.PipelineTask

    def training_inputs(self) -> dict[str, Any]:
        """What a training step (``train``, ``katib_sweep``) takes from these steps."""
        return {
            "train_features": self.prepared.outputs["train_features"],
            "validation_features": self.prepared.outputs["validation_features"],
            "feature_spec": self.prepared.outputs["feature_spec"],
            "raw_train": self.splits.outputs["train"],
            "data_sha256": self.versioned.outputs["sha256"],
        }


def add_data_steps(image: str, params: Mapping[str, Any]) -> DataSteps:
    """version -> validate -> split -> preprocess in ``image``, with the data parameters from ``params``."""
    version_op, validate_op = component_op(version_data, image), component_op(validate_data, image)
    split_op, preprocess_op = component_op(split_data, image), component_op(preprocess, image)
    # Always read the data: the sha256 it hands on is what makes the later steps' cache correct.
    versioned = step(version_op, "version data", cache=False, **inputs_from(version_op, params))
    sha256 = versioned.outputs["sha256"]
    # Never cached: with no suite given, the data is held to the current champion's suite, state outside KFP.
    validated = step(
        validate_op,
        "validate",
        cache=False,
        **inputs_from(
            validate_op,
            params,
            data_sha256=sha256,
            suite_sha256=versioned.outputs["suite_sha256"],
            mode=params["validation_mode"],
        ),
    )
    splits = step(split_op, "split", **inputs_from(split_op, params, data_sha256=sha256, seed=params["split_seed"]))
    splits.after(validated)  # nothing trains on data that failed validation
    prepared = step(
        preprocess_op,
        "preprocess",
        **inputs_from(
            preprocess_op,
            params,
            train=splits.outputs["train"],
            validation=splits.outputs["validation"],
            test=splits.outputs["test"],
            schema_json=versioned.outputs["schema_json"],
            data_sha256=sha256,
        ),
    )
    return DataSteps(versioned, validated, splits, prepared)
