"""Parameters that several pipelines take, each declared once, and ``takes``, which adds them to a pipeline.

- ``DATA_PARAMETERS``: the data, and how to validate, split and encode it (what ``steps.add_data_steps`` reads):
  the training pipeline and both sweep pipelines take them.
- ``TRAIN_PARAMETERS``: the training hyperparameters, derived from ``TrainConfig`` (the one source of truth):
  each field under its parameter name, of its type, with its default. The training and sweep-trial pipelines
  take them.

A pipeline declares its own parameters as usual and ``@takes(...)`` appends the groups to its signature, which
is what KFP reads: the Kubeflow UI still shows each as its own typed parameter with its default. The body gets
the groups' values in ``**kwargs``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from kfops.components.contracts import TrainConfig

DEFAULT_TARGET = "is_fraud"
DEFAULT_ARTIFACT_STORE = "s3://kfops"


def _data_parameters(
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
    artifact_store: str = DEFAULT_ARTIFACT_STORE,
) -> None:
    """Declares DATA_PARAMETERS (a signature is the plainest way to write typed parameters with defaults)."""


DATA_PARAMETERS = tuple(inspect.signature(_data_parameters, eval_str=True).parameters.values())


def _train_parameters() -> tuple[inspect.Parameter, ...]:
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in TrainConfig.NOT_PARAMETERS:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append(
            inspect.Parameter(
                TrainConfig.PARAMETER_NAMES.get(f.name, f.name),
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=default,
                # KFP knows list, not list[int]
                annotation=typing.get_origin(hints[f.name]) or hints[f.name],
            )
        )
    return tuple(out)


TRAIN_PARAMETERS = _train_parameters()


def takes(*groups: Sequence[inspect.Parameter]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator (under ``@dsl.pipeline``): the pipeline function also takes every parameter of ``groups``, after
    its own; its body receives them in its ``**kwargs``. A name both declared and in a group is an error."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [p for group in groups for p in group]
        clash = sorted({p.name for p in kept} & {p.name for p in added})
        if clash:
            raise TypeError(f"{func.__name__} declares {clash}, which a parameter group it takes also has")
        signature = own.replace(parameters=[*kept, *added])

        @functools.wraps(func)
        def pipeline(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return func(**bound.arguments)

        pipeline.__signature__ = signature  # what KFP reads the pipeline's parameters from
        return pipeline

    return decorate
