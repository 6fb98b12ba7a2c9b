"""The sweep spec: W&B's ``sweep.yaml`` format, parsed into typed, validated parameter spaces.

W&B itself is not a dependency: the format is kept so a spec written for ``wandb sweep`` reads the same here.
What is read (every other key is an error that names it)::

    method: bayes | random | grid
    metric: {name: val_loss, goal: minimize}      # default; any of the suite's metrics on the validation split
    run_cap: 20                                    # W&B's key: the trial budget (default 10; grid: the grid)
    parameters:
      learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-1}
      batch_size:    {values: [128, 256, 512]}
      dropout:       {distribution: uniform, min: 0.0, max: 0.4}
      hidden_sizes:  {values: [[64, 32], [128, 64]]}
      epochs:        {value: 8}                     # fixed for every trial
    early_terminate: {type: hyperband, min_iter: 2, eta: 3}
    kfops:                                         # what W&B has no key for
      parallel: 2                                  # trials at once
      seed: 0                                      # seeds the sampler
      katib_algorithm: tpe                         # bayes on Katib: tpe (default) or bayesianoptimization
    name: ..., description: ...                    # name the study, the MLflow parent run, the Katib Experiment
    program: ..., command: ..., project: ..., entity: ...   # W&B's: accepted and ignored

Parameters are the training hyperparameters (``TrainConfig`` fields; ``threshold`` is ``decision_threshold``).
Distributions, with W&B's meaning of each key:

========================  ====================  ==================================================================
distribution              keys                  values
========================  ====================  ==================================================================
constant                  value                 always ``value`` (also: ``value`` with no distribution)
categorical               values                one of ``values`` (also: ``values`` with no distribution)
int_uniform               min, max              integers in [min, max]
uniform                   min, max              reals in [min, max]
q_uniform                 min, max, q           min, min + q, min + 2q, ... up to max
log_uniform               min, max              exp(U(min, max)): **min and max are natural-log exponents**
log_uniform_values        min, max              log-uniform between the values min and max
q_log_uniform             min, max, q           log_uniform rounded to min + a multiple of q (exponents)
q_log_uniform_values      min, max, q           log_uniform_values rounded to min + a multiple of q
normal                    mu, sigma             N(mu, sigma)
q_normal                  mu, sigma, q          N(mu, sigma) rounded to a multiple of q
log_normal                mu, sigma             exp(N(mu, sigma))
q_log_normal              mu, sigma, q          exp(N(mu, sigma)) rounded to a multiple of q
========================  ====================  ==================================================================

``min``/``max`` with no distribution mean ``int_uniform`` when both are integers, else ``uniform`` (as W&B).
``log_uniform`` takes exponents: ``min: 0.00001, max: 0.1`` samples between 1.00001 and 1.105, which is rarely
what was meant; the spec gets a warning saying so (use ``log_uniform_values`` for values). Integer
hyperparameters (``batch_size``, ``epochs``, ``early_stopping_patience``, ``seed``) take ``values``,
``int_uniform`` or a ``q_`` distribution with an integer ``q``. Every bound and value is checked against what
training accepts (``TrainConfig.check``), so a bad spec fails before any trial runs.

Plain Python, no heavy imports: ``optuna_backend`` and ``katib`` map a ``SweepSpec`` to Optuna and Katib.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kfops.components.contracts import HIGHER_IS_BETTER, KfopsError, TrainConfig
from kfops.components.contracts.models import GbdtConfig
from kfops.components.contracts.sweep import (
    ALIASES,
    CHOICE_FIELDS,
    DEFAULT_METRIC,
    DISTRIBUTIONS,
    FAMILY_PARAMETER_PREFIX,
    FLOAT_FIELDS,
    GOALS,
    INT_FIELDS,
    KATIB_BAYES_ALGORITHMS,
    KFOPS_KEYS,
    LIST_FIELDS,
    METHODS,
    TOP_LEVEL_KEYS,
    TUNABLE,
    UNSUPPORTED,
    W_AND_B_ONLY_KEYS,
    EarlyTerminate,
    ParameterSpace,
    SweepSpec,
    _check_budget,
    _int,
    _positive_int,
    family_parameter_names,
    family_parameter_type,
    objective_metrics,
)


# ------------------------------------------------------------------------------------------------ parsing
def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file (local path)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise KfopsError(f"cannot read sweep spec {path}: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise KfopsError(f"{path}: not valid YAML: {err}") from err
    return parse_spec(data, source=str(path))


def parse_spec(data: Any, source: str = "sweep spec") -> SweepSpec:
    """Validate a sweep spec (the parsed YAML); every error names the key that is wrong."""
    if not isinstance(data, dict):
        raise KfopsError(f"{source}: a sweep spec is a mapping with method, metric and parameters, got {data!r}")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise KfopsError(f"{source}: unknown key(s) {unknown}; a sweep spec has {', '.join(TOP_LEVEL_KEYS)}")
    warnings: list[str] = []
    ignored = [k for k in W_AND_B_ONLY_KEYS if k in data]
    if ignored:
        warnings.append(f"{', '.join(ignored)}: W&B's, ignored (trials run kfops' training component)")

    method = data.get("method")
    if method not in METHODS:
        raise KfopsError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
    metric, goal = _parse_metric(data.get("metric"), source)
    raw_parameters = data.get("parameters")
    if not isinstance(raw_parameters, dict) or not raw_parameters:
        raise KfopsError(f"{source}: parameters must be a mapping of hyperparameter name to its search space")
    parameters = [_parse_parameter(name, raw, source, warnings) for name, raw in raw_parameters.items()]
    names = [p.name for p in parameters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KfopsError(f"{source}: parameters name {duplicates} twice (threshold is decision_threshold)")
    if all(p.fixed for p in parameters):
        raise KfopsError(f"{source}: parameters: every parameter is a constant; there is nothing to search")
    family = next((p for p in parameters if p.name == "model_family"), None)
    family_names = [n for n in names if n.startswith(FAMILY_PARAMETER_PREFIX)]
    if family_names and family is not None and "gbdt" not in family.values:
        raise KfopsError(
            f"{source}: parameters {', '.join(family_names)} are gbdt's, but model_family takes only "
            f"{', '.join(map(str, family.values))}; add gbdt to model_family's values"
        )

    options = data.get("kfops") or {}
    if not isinstance(options, dict):
        raise KfopsError(f"{source}: kfops must be a mapping with {', '.join(KFOPS_KEYS)}")
    unknown = sorted(set(options) - set(KFOPS_KEYS))
    if unknown:
        raise KfopsError(f"{source}: kfops: unknown key(s) {unknown}; known: {', '.join(KFOPS_KEYS)}")
    katib_algorithm = options.get("katib_algorithm", "tpe")
    if katib_algorithm not in KATIB_BAYES_ALGORITHMS:
        raise KfopsError(
            f"{source}: kfops.katib_algorithm must be {' or '.join(KATIB_BAYES_ALGORITHMS)}, got {katib_algorithm!r}"
        )
    name = str(data.get("name") or Path(source).stem or "sweep")
    spec = SweepSpec(
        method=method,
        parameters=parameters,
        metric=metric,
        goal=goal,
        parallel=_positive_int(options.get("parallel", 1), f"{source}: kfops.parallel"),
        seed=_int(options.get("seed", 0), f"{source}: kfops.seed"),
        katib_algorithm=katib_algorithm,
        early_terminate=_parse_early_terminate(data.get("early_terminate"), source),
        name=name,
        description=str(data.get("description") or ""),
        source=source,
        warnings=warnings,
    )
    if options.get("max_failed") is not None:
        spec.max_failed = _int(options["max_failed"], f"{source}: kfops.max_failed")
        if spec.max_failed < 0:
            raise KfopsError(f"{source}: kfops.max_failed must be 0 or more, got {spec.max_failed}")
    if method == "grid":
        size = math.prod(len(p.grid_values()) for p in parameters)
        spec.trials = (
            size if data.get("run_cap") is None else min(size, _positive_int(data["run_cap"], f"{source}: run_cap"))
        )
    elif data.get("run_cap") is not None:
        spec.trials = _positive_int(data["run_cap"], f"{source}: run_cap")
    _check_budget(spec)
    return spec


def _parse_metric(raw: Any, source: str) -> tuple[str, str]:
    if raw is None:
        return DEFAULT_METRIC, "minimize"
    if not isinstance(raw, dict):
        raise KfopsError(f"{source}: metric must be a mapping with name and goal, got {raw!r}")
    unknown = sorted(set(raw) - {"name", "goal", "target"})
    if unknown:
        raise KfopsError(f"{source}: metric: unknown key(s) {unknown}; known: name, goal")
    name = str(raw.get("name") or "")
    # The suite's names, on the validation split: f1_macro is val_f1_macro, as the training run logs it.
    canonical = name if name.startswith("val_") else f"val_{name}"
    if canonical not in objective_metrics():
        raise KfopsError(
            f"{source}: metric.name {name!r} is not a metric trials report; use one of "
            f"{', '.join(objective_metrics())} (the val_ prefix may be left out)"
        )
    bare = canonical.removeprefix("val_") if canonical != "val_loss" else "val_loss"
    natural = "maximize" if HIGHER_IS_BETTER[bare] else "minimize"
    goal = raw.get("goal", natural)
    if goal not in GOALS:
        raise KfopsError(f"{source}: metric.goal must be minimize or maximize, got {goal!r}")
    if goal != natural:
        raise KfopsError(
            f"{source}: metric.goal {goal} contradicts {canonical}, which is better when "
            f"{'higher' if natural == 'maximize' else 'lower'} (goal: {natural})"
        )
    return canonical, goal


def _parse_early_terminate(raw: Any, source: str) -> EarlyTerminate | None:
    if raw is None:
        return None
    where = f"{source}: early_terminate"
    if not isinstance(raw, dict):
        raise KfopsError(f"{where} must be a mapping with type: hyperband, got {raw!r}")
    unknown = sorted(set(raw) - {"type", "min_iter", "max_iter", "s", "eta", "strict"})
    if unknown:
        raise KfopsError(f"{where}: unknown key(s) {unknown}; known: type, min_iter, max_iter, s, eta, strict")
    if raw.get("type") != "hyperband":
        raise KfopsError(f"{where}.type must be hyperband (W&B's only early-termination type), got {raw.get('type')!r}")
    eta = _int(raw.get("eta", 3), f"{where}.eta")
    if eta < 2:
        raise KfopsError(f"{where}.eta must be at least 2, got {eta}")
    max_iter = _positive_int(raw["max_iter"], f"{where}.max_iter") if raw.get("max_iter") is not None else None
    if raw.get("min_iter") is not None:
        min_iter = _positive_int(raw["min_iter"], f"{where}.min_iter")
    elif max_iter is not None:
        # W&B: with max_iter, s brackets below it: the first at max_iter / eta**s epochs.
        s = _positive_int(raw.get("s", 1), f"{where}.s")
        min_iter = max(1, max_iter // eta**s)
    else:
        raise KfopsError(f"{where}: hyperband needs min_iter (or max_iter with s)")
    if max_iter is not None and max_iter < min_iter:
        raise KfopsError(f"{where}.max_iter ({max_iter}) must not be below min_iter ({min_iter})")
    return EarlyTerminate(min_iter=min_iter, max_iter=max_iter, eta=eta)


def _parse_parameter(name: Any, raw: Any, source: str, warnings: list[str]) -> ParameterSpace:
    field_name = ALIASES.get(str(name), str(name))
    where = f"{source}: parameters.{name}"
    family_type = family_parameter_type(field_name)
    if field_name not in TUNABLE and family_type is None:
        raise KfopsError(
            f"{where}: not a hyperparameter of training; tunable: {', '.join(TUNABLE)} (or threshold), and gbdt's "
            f"{', '.join(family_parameter_names())}"
        )
    if not isinstance(raw, dict):
        raise KfopsError(f"{where} must be a mapping such as {{values: [...]}} or {{distribution: uniform, min, max}}")
    distribution = raw.get("distribution")
    if distribution is None:
        if "value" in raw:
            distribution = "constant"
        elif "values" in raw:
            distribution = "categorical"
        elif "min" in raw and "max" in raw:
            both_int = all(isinstance(raw[k], int) and not isinstance(raw[k], bool) for k in ("min", "max"))
            distribution = "int_uniform" if both_int else "uniform"
        elif "mu" in raw or "sigma" in raw:
            distribution = "normal"
        else:
            raise KfopsError(f"{where}: give value, values, min and max, or a distribution")
    if distribution in UNSUPPORTED:
        raise KfopsError(f"{where}.distribution '{distribution}' is not supported: {UNSUPPORTED[distribution]}")
    if distribution not in DISTRIBUTIONS:
        raise KfopsError(f"{where}.distribution {distribution!r} is unknown; supported: {', '.join(DISTRIBUTIONS)}")
    allowed = set(DISTRIBUTIONS[distribution]) | {"distribution"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise KfopsError(
            f"{where}: key(s) {unknown} do not belong to distribution {distribution} "
            f"(it takes {', '.join(DISTRIBUTIONS[distribution])})"
        )
    integer = field_name in INT_FIELDS or family_type is int

    if distribution in ("constant", "categorical"):
        values = [raw.get("value")] if distribution == "constant" else raw.get("values")
        key = "value" if distribution == "constant" else "values"
        if values is None or values == [None]:
            raise KfopsError(f"{where}.{key} is required")
        if not isinstance(values, list) or not values:
            raise KfopsError(f"{where}.{key} must be a non-empty list, got {values!r}")
        normalised = tuple(_choice(field_name, v, f"{where}.{key}") for v in values)
        if len({repr(v) for v in normalised}) != len(normalised):
            raise KfopsError(f"{where}.{key} lists a value twice: {values}")
        return ParameterSpace(field_name, distribution, values=normalised, integer=integer)

    if field_name in (*CHOICE_FIELDS, *LIST_FIELDS):
        raise KfopsError(f"{where}: {field_name} takes values (a list of choices), not distribution {distribution}")
    quantized = distribution.startswith("q_")
    q = None
    if quantized:
        q = _number(raw.get("q", 1), f"{where}.q")
        if q <= 0:
            raise KfopsError(f"{where}.q must be positive, got {q}")
        if integer and q != int(q):
            raise KfopsError(f"{where}.q must be a whole number: {field_name} is an integer, got {q}")
    if integer and distribution != "int_uniform" and not quantized:
        raise KfopsError(
            f"{where}: {field_name} is an integer; use values, int_uniform or a q_ distribution "
            f"(e.g. q_{distribution} with q: 1), not {distribution}"
        )
    if distribution == "int_uniform" and not integer:
        raise KfopsError(f"{where}: int_uniform draws integers but {field_name} is a real number; use uniform")

    if distribution.endswith("normal"):
        mu = _number(raw.get("mu", 0.0), f"{where}.mu")
        sigma = _number(raw.get("sigma", 1.0), f"{where}.sigma")
        if sigma <= 0:
            raise KfopsError(f"{where}.sigma must be positive, got {sigma}")
        space = ParameterSpace(field_name, distribution, mu=mu, sigma=sigma, q=q, integer=integer)
        # Normal draws are unbounded: check the value three standard deviations either side, what Katib searches.
        for value in katib_bounds(space):
            _check_value(field_name, space.quantize(value), f"{where} (mu ± 3 sigma)")
        return space

    for key in ("min", "max"):
        if key not in raw:
            raise KfopsError(f"{where}.{key} is required for distribution {distribution}")
    low, high = _number(raw["min"], f"{where}.min"), _number(raw["max"], f"{where}.max")
    if distribution == "int_uniform":
        for key, value in (("min", raw["min"]), ("max", raw["max"])):
            if value != int(value):
                raise KfopsError(f"{where}.{key} must be an integer for int_uniform, got {value}")
    if low >= high:
        raise KfopsError(f"{where}: min ({low}) must be below max ({high})")
    if distribution in ("log_uniform", "q_log_uniform"):
        if high > 50:
            raise KfopsError(
                f"{where}: {distribution} takes natural-log exponents (W&B): max {high} means e^{high:g}; "
                f"use {distribution}_values for values"
            )
        if 0 < low < high <= 1:
            warnings.append(
                f"parameters.{name}: {distribution} takes natural-log exponents (W&B's meaning): min {low:g} and max "
                f"{high:g} sample between {math.exp(low):.6g} and {math.exp(high):.6g}; for values between {low:g} "
                f"and {high:g} use {distribution}_values"
            )
        low, high = math.exp(low), math.exp(high)
    elif distribution.startswith(("log_", "q_log_")) and low <= 0:
        raise KfopsError(f"{where}.min must be positive for {distribution}, got {low}")
    if quantized and high - low < q - 1e-12:
        raise KfopsError(f"{where}: q ({q}) is wider than the range [{low:g}, {high:g}]")
    space = ParameterSpace(field_name, distribution, low=low, high=high, q=q, integer=integer)
    for key, value in (("min", low), ("max", high)):
        _check_value(field_name, space.quantize(value), f"{where}.{key}")
    return space


def katib_bounds(space: ParameterSpace) -> tuple[float, float]:
    """A space's [min, max] in value space; for normal distributions mu ± 3 sigma (exponentiated for log_normal),
    which Katib reads back as mean (min + max) / 2 and standard deviation (max - min) / 6."""
    if space.normal:
        low, high = space.mu - 3 * space.sigma, space.mu + 3 * space.sigma
        return (math.exp(low), math.exp(high)) if space.log else (low, high)
    return space.low, space.high


def _choice(field_name: str, value: Any, where: str) -> Any:
    """A categorical value in the type training takes, checked by TrainConfig."""
    family_type = family_parameter_type(field_name)
    if family_type is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KfopsError(f"{where}: {field_name} is a number, got {value!r}")
        if family_type is int and value != int(value):
            raise KfopsError(f"{where}: {field_name} is an integer, got {value!r}")
        value = family_type(value)
    elif field_name in LIST_FIELDS:
        if isinstance(value, str):
            try:
                value = [int(part) for part in value.split(",") if part.strip()]
            except ValueError as err:
                raise KfopsError(f"{where}: {value!r} is not a list of layer widths such as [64, 32]") from err
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise KfopsError(f"{where}: {value!r} is not a list of layer widths such as [64, 32]")
        value = tuple(value)
    elif field_name in INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise KfopsError(f"{where}: {field_name} is an integer, got {value!r}")
        value = int(value)
    elif field_name in FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KfopsError(f"{where}: {field_name} is a number, got {value!r}")
        value = float(value)
    elif not isinstance(value, str):
        raise KfopsError(f"{where}: {field_name} is a word such as 'adamw', got {value!r}")
    _check_value(field_name, list(value) if isinstance(value, tuple) else value, where)
    return value


def _check_value(field_name: str, value: Any, where: str) -> None:
    if family_parameter_type(field_name) is not None:
        try:
            GbdtConfig.from_dict({field_name.removeprefix(FAMILY_PARAMETER_PREFIX): value})
        except KfopsError as err:
            raise KfopsError(f"{where}: {str(err).removeprefix('train: ')}") from err
        return
    try:
        config = TrainConfig(**{field_name: value})
        config.check()
    except KfopsError as err:
        raise KfopsError(f"{where}: {str(err).removeprefix('train: ')}") from err
    if (
        field_name in INT_FIELDS
        and field_name != "seed"
        and value < (0 if field_name == "early_stopping_patience" else 1)
    ):
        raise KfopsError(f"{where}: {field_name} must be positive, got {value}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KfopsError(f"{where} must be a number, got {value!r}")
    return float(value)
