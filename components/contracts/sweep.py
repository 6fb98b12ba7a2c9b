"""The sweep contract: a hyperparameter search (``SweepSpec``) with one search space per ``TrainConfig`` field
(``ParameterSpace``), as ``kfops.components.sweep.spec`` parses it from a W&B-style YAML file and the Optuna and
Katib back ends run it. Standard library only.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from kfops.components.contracts import METRIC_NAMES, MODEL_FAMILY_GBDT, TASK_METRIC_NAMES, KfopsError, TrainConfig
from kfops.components.contracts.models import GbdtConfig

METHODS = ("bayes", "random", "grid")
GOALS = ("minimize", "maximize")
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values",),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform": ("min", "max"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform": ("min", "max", "q"),
    "q_log_uniform_values": ("min", "max", "q"),
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
    "log_normal": ("mu", "sigma"),
    "q_log_normal": ("mu", "sigma", "q"),
}
# W&B distributions with no counterpart in Optuna and Katib both.
UNSUPPORTED = {
    "inv_log_uniform": "no counterpart in Optuna or Katib",
    "inv_log_uniform_values": "no counterpart in Optuna or Katib",
    "beta": "no counterpart in Optuna or Katib",
    "q_beta": "no counterpart in Optuna or Katib",
    "categorical_w_probabilities": "Optuna and Katib sample categories uniformly",
}
W_AND_B_ONLY_KEYS = ("program", "command", "project", "entity")
TOP_LEVEL_KEYS = (
    "method",
    "metric",
    "parameters",
    "run_cap",
    "early_terminate",
    "kfops",
    "name",
    "description",
    *W_AND_B_ONLY_KEYS,
)
KFOPS_KEYS = ("parallel", "seed", "katib_algorithm", "max_failed")
KATIB_BAYES_ALGORITHMS = ("tpe", "bayesianoptimization")
DEFAULT_TRIALS = 10
DEFAULT_METRIC = "val_loss"

INT_FIELDS = ("batch_size", "epochs", "early_stopping_patience", "seed")
FLOAT_FIELDS = ("dropout", "learning_rate", "weight_decay", "decision_threshold")
CHOICE_FIELDS = ("optimizer", "class_weighting", "model_family")  # model_family: mlp or gbdt, with their defaults
LIST_FIELDS = ("hidden_sizes",)
TUNABLE = (*LIST_FIELDS, *FLOAT_FIELDS, *INT_FIELDS, *CHOICE_FIELDS)
# A family's own parameters are searched as ``model_params.<name>`` (gbdt: GbdtConfig's fields). They apply to the
# trials of that family: with model_family searched too, an mlp trial leaves them out.
FAMILY_PARAMETER_PREFIX = "model_params."
ALIASES = {"threshold": "decision_threshold"}
# Quantiles of normal distributions are kept off 0 and 1, where the inverse CDF is infinite.
QUANTILE_EPSILON = 1e-6


def family_parameter_type(name: str) -> type | None:
    """``int`` or ``float`` for a searchable family parameter (``model_params.max_leaf_nodes``), else None."""
    if not name.startswith(FAMILY_PARAMETER_PREFIX):
        return None
    return typing.get_type_hints(GbdtConfig).get(name.removeprefix(FAMILY_PARAMETER_PREFIX))


def family_parameter_names() -> tuple[str, ...]:
    return tuple(FAMILY_PARAMETER_PREFIX + f.name for f in dataclasses.fields(GbdtConfig))


def objective_metrics(task: str = "") -> tuple[str, ...]:
    """Metric names a sweep may optimise: ``val_loss`` and each suite metric on the validation split; with
    ``task``, only that task's (what its trials report)."""
    names = TASK_METRIC_NAMES[task] if task else METRIC_NAMES
    return ("val_loss", *(f"val_{name}" for name in names if name != "val_loss"))


def check_objective_for_task(spec: SweepSpec, task: str, source: str = "sweep") -> None:
    """A KfopsError before any trial runs when the spec optimises a metric the data's task does not report
    (``val_roc_auc`` on a regression target), naming the task's metrics."""
    if spec.metric not in objective_metrics(task):
        raise KfopsError(
            f"{source}: metric.name {spec.metric} is not reported for a {task} target; a {task} sweep may optimise "
            f"{', '.join(objective_metrics(task))}"
        )


@dataclass(frozen=True)
class ParameterSpace:
    """One hyperparameter's search space, in value space (``log_uniform``'s exponents already exponentiated)."""

    name: str  # a TrainConfig field
    distribution: str  # a key of DISTRIBUTIONS
    values: tuple = ()  # categorical choices, or the one constant
    low: float | None = None  # bounds of uniform-family distributions, in value space
    high: float | None = None
    mu: float | None = None  # normal family (log space for log_normal)
    sigma: float | None = None
    q: float | None = None
    integer: bool = False  # the field is an integer: values are rounded and cast

    @property
    def fixed(self) -> bool:
        return self.distribution == "constant"

    @property
    def log(self) -> bool:
        return "log_" in self.distribution

    @property
    def normal(self) -> bool:
        return self.distribution.endswith("normal")

    def quantize(self, value: float) -> float | int:
        """Round a sampled number as the distribution says and cast integers: to ``min`` plus a multiple of q
        where there is a ``min`` (W&B rounds to a multiple of q: the same grid when ``min`` is one), else to a
        multiple of q; kept inside [min, max]."""
        if self.q:
            origin = self.low if self.low is not None else 0.0
            value = origin + round((value - origin) / self.q) * self.q
            if self.low is not None and self.high is not None:
                value = min(max(value, self.low), self.high)
            value = round(value, 12)  # 0.30000000000000004 is 0.3
        return round(value) if self.integer else float(value)

    def grid_values(self) -> list:
        """Every value of a finite space (grid search); KfopsError for a continuous one."""
        if self.distribution in ("constant", "categorical"):
            return list(self.values)
        if self.distribution == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        if self.distribution == "q_uniform":
            count = math.floor((self.high - self.low) / self.q + 1e-9) + 1
            return [self.quantize(self.low + i * self.q) for i in range(count)]
        raise KfopsError(
            f"parameters.{self.name}: grid search needs a finite set of values, but distribution "
            f"'{self.distribution}' is continuous; use values, int_uniform or q_uniform"
        )


@dataclass(frozen=True)
class EarlyTerminate:
    """W&B's ``early_terminate`` (hyperband): stop trials whose validation metric lags after ``min_iter`` epochs."""

    type: str = "hyperband"
    min_iter: int = 1
    max_iter: int | None = None
    eta: int = 3


@dataclass
class SweepSpec:
    method: str
    parameters: list[ParameterSpace]
    metric: str = DEFAULT_METRIC  # an objective_metrics() name
    goal: str = "minimize"
    trials: int = DEFAULT_TRIALS
    parallel: int = 1
    seed: int = 0
    katib_algorithm: str = "tpe"
    max_failed: int | None = None
    early_terminate: EarlyTerminate | None = None
    name: str = "sweep"
    description: str = ""
    source: str = "sweep spec"  # where it was read from, for messages
    warnings: list[str] = field(default_factory=list)

    @property
    def searched(self) -> list[ParameterSpace]:
        return [p for p in self.parameters if not p.fixed]

    @property
    def fixed(self) -> dict[str, Any]:
        return {p.name: p.values[0] for p in self.parameters if p.fixed}

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize"

    def parameter(self, name: str) -> ParameterSpace:
        for space in self.parameters:
            if space.name == name:
                return space
        raise KeyError(name)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of a grid sweep's values, in a stable order."""
        names = [p.name for p in self.parameters]
        return [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(p.grid_values() for p in self.parameters))
        ]

    def config(self, values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """The TrainConfig of one trial: ``base`` (default: TrainConfig()) with the fixed and sampled values;
        ``model_params.<name>`` values go into ``model_params`` when the trial's family is gbdt."""
        chosen = self.fixed | values
        prefix = FAMILY_PARAMETER_PREFIX
        family_values = {k.removeprefix(prefix): v for k, v in chosen.items() if k.startswith(prefix)}
        merged = dataclasses.asdict(base or TrainConfig()) | {
            k: v for k, v in chosen.items() if not k.startswith(prefix)
        }
        if family_values:
            if merged["model_family"] == MODEL_FAMILY_GBDT:
                merged["model_params"] = dict(merged.get("model_params") or {}) | family_values
            elif not any(p.name == "model_family" for p in self.searched):
                names = ", ".join(FAMILY_PARAMETER_PREFIX + k for k in sorted(family_values))
                raise KfopsError(
                    f"{self.source}: parameters {names} are gbdt's, but the trials train model_family "
                    f"{merged['model_family']}; set model_family to gbdt (parameters.model_family or --model gbdt)"
                )
        config = TrainConfig.from_dict(merged)
        config.check()
        return config

    def with_overrides(self, trials: int | None = None, parallel: int | None = None) -> SweepSpec:
        """The spec with the command line's trial budget and parallelism (checked as the spec's own)."""
        spec = dataclasses.replace(self, warnings=list(self.warnings))
        if trials is not None:
            spec.trials = _positive_int(trials, f"{self.source}: --trials")
        if parallel is not None:
            spec.parallel = _positive_int(parallel, f"{self.source}: --parallel")
        _check_budget(spec)
        return spec


def _check_budget(spec: SweepSpec) -> None:
    if spec.method == "grid":
        spec.trials = min(spec.trials, math.prod(len(p.grid_values()) for p in spec.parameters))
    spec.parallel = min(spec.parallel, spec.trials)
    if spec.max_failed is not None and spec.max_failed > spec.trials:
        raise KfopsError(
            f"{spec.source}: kfops.max_failed ({spec.max_failed}) must not exceed the trial budget ({spec.trials})"
        )


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KfopsError(f"{where} must be an integer, got {value!r}")
    return value


def _positive_int(value: Any, where: str) -> int:
    value = _int(value, where)
    if value < 1:
        raise KfopsError(f"{where} must be at least 1, got {value}")
    return value
