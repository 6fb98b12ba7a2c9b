"""Parameters that several pipelines take, each declared once, and ``takes``, which adds them to a pipeline.

- ``DATA_PARAMETERS``: the data, and how to validate, split and encode it (what ``steps.add_data_steps`` reads):
  the training pipeline and both sweep pipelines take them.
- ``DEPLOYMENT_PARAMETERS``: where and how a model is served and its canary rolled out (what
  ``deployment.add_deployment_steps`` reads): the deployment pipeline takes them, and the training pipeline with
  the rollout's named ``canary_*`` (``CANARY_NAMES``).
- ``TRAIN_PARAMETERS``: the training hyperparameters, derived from ``TrainConfig`` (the one source of truth):
  each field under its parameter name, of its type, with its default. The training and sweep-trial pipelines
  take them.

A pipeline declares its own parameters as usual and ``@takes(...)`` appends the groups to its signature, which
is what KFP reads: the Kubeflow UI still shows each as its own typed parameter with its default. The body gets
the groups' values in ``**kwargs``.

Descriptions: ``takes`` (and ``described`` for a pipeline that takes no group) writes the pipeline function's
``Args:``/``Returns:`` docstring sections, which KFP's compiler turns into each parameter's ``description`` in the
compiled YAML, from ``kfp_support.DESCRIPTIONS`` (the same text its steps' inputs of the same names get), the
renamed canary parameters' from their originals, and entries the pipeline's own docstring writes for the names
only it has. KFP writes the YAML's parameters sorted by name (``sort_keys=True``), which is also the order the
Kubeflow UI lists them in; ``first`` still puts the common ones first in the Python signature and the docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from kfops.components.contracts import TrainConfig
from kfops.components.kfp_support import DESCRIPTIONS
from kfops.components.kfp_support import described as _described

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
    task: str = "auto",  # auto, binary, multiclass or regression
    expectation_suite: str = "",
    validation_mode: str = "fail",
    max_missing: float = -1.0,  # at least 0: the fixed-cap suite; below: the inferred or the champion's suite
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 42,
    max_categories: int = 50,
    min_frequency: int = 5,
    artifact_store: str = DEFAULT_ARTIFACT_STORE,
) -> None:
    """Declares DATA_PARAMETERS (a signature is the plainest way to write typed parameters with defaults)."""


DATA_PARAMETERS = tuple(inspect.signature(_data_parameters, eval_str=True).parameters.values())


def _deployment_parameters(
    isvc_name: str = "",
    namespace: str = "",
    deployment_mode: str = "knative",
    canary_percent: int = 10,
    service_account: str = "kfops-model-reader",
    steps: list = [10, 25, 50, 100],  # noqa: B006 - KFP pipeline defaults are declarations, never mutated
    window_seconds: float = 300.0,
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090",
    max_error_rate: float = 0.01,
    max_p99_ratio: float = 1.5,
    min_requests: int = 50,
) -> None:
    """Declares DEPLOYMENT_PARAMETERS."""


DEPLOYMENT_PARAMETERS = tuple(inspect.signature(_deployment_parameters, eval_str=True).parameters.values())
# The rollout's parameters as the training pipeline names them, beside its training parameters.
CANARY_NAMES = {
    "steps": "canary_steps",
    "window_seconds": "canary_window_seconds",
    "max_error_rate": "canary_max_error_rate",
    "max_p99_ratio": "canary_max_p99_ratio",
    "min_requests": "canary_min_requests",
}
# The renamed parameters mean what their originals mean, in the training pipeline's canary rollout.
RENAMED_DESCRIPTIONS = {ours: f"{DESCRIPTIONS[name]} (deploy=True only)" for name, ours in CANARY_NAMES.items()}
# What a user sets first, in this order, wherever a pipeline has them.
COMMON_FIRST = ("data_uri", "data_version", "target", "model_name")


def renamed(group: Sequence[inspect.Parameter], names: dict[str, str]) -> tuple[inspect.Parameter, ...]:
    """``group`` with the parameters in ``names`` renamed (same types and defaults)."""
    return tuple(p.replace(name=names.get(p.name, p.name)) for p in group)


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


def described(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator (under ``@dsl.pipeline``): describe each parameter and output of the pipeline in its docstring,
    which KFP reads (``kfp_support.described``, with the renamed canary parameters' descriptions)."""
    return _described(func, RENAMED_DESCRIPTIONS)


def takes(
    *groups: Sequence[inspect.Parameter], first: Sequence[str] = COMMON_FIRST
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator (under ``@dsl.pipeline``): the pipeline function also takes every parameter of ``groups``, after
    its own; its body receives them in its ``**kwargs``. A name both declared and in a group is an error. The
    parameters named in ``first`` that it has come first, in that order; each parameter is described (``described``).
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [p for group in groups for p in group]
        clash = sorted({p.name for p in kept} & {p.name for p in added})
        if clash:
            raise TypeError(f"{func.__name__} declares {clash}, which a parameter group it takes also has")
        every = [*kept, *added]
        rank = {name: i for i, name in enumerate(first)}
        # a stable sort: the common ones first, the rest as declared (KFP passes parameters by name only)
        ordered = sorted(every, key=lambda p: rank.get(p.name, len(rank)))
        try:
            signature = own.replace(parameters=ordered)
        except ValueError:  # a required parameter may not follow one with a default: keep the declared order
            signature = own.replace(parameters=every)

        @functools.wraps(func)
        def pipeline(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return func(**bound.arguments)

        pipeline.__signature__ = signature  # what KFP reads the pipeline's parameters from
        return described(pipeline)

    return decorate
