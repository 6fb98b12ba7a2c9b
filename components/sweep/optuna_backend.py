"""Sweeps on Optuna: one study in shared storage that every worker asks for a trial and tells its result.

The storage is an RDB URL: ``sqlite:///<workspace>/sweeps/optuna.db`` locally, a database on a cluster
(``postgresql://...``, from the environment, never a pipeline parameter). Workers are separate processes, so a
bayes (TPE) worker's next trial already knows every trial finished by any worker, and a training process
reports each epoch's validation metric to its own trial so the study's pruner can stop it.

Mapping of the spec (``spec.py``):

- method: ``bayes`` -> ``TPESampler`` (multivariate, constant liar for parallel workers), ``random`` ->
  ``RandomSampler``, ``grid`` -> ``GridSampler`` over every combination; each worker seeds its sampler
  differently (``seed + worker``), so parallel workers do not propose the same first points.
- ``early_terminate: hyperband`` -> ``HyperbandPruner(min_resource=min_iter, max_resource=max_iter or the most
  epochs a trial can run, reduction_factor=eta)``; the resource is the epoch.
- distributions: ``categorical`` -> ``CategoricalDistribution`` (layer-width lists as JSON strings),
  ``int_uniform`` -> ``IntDistribution``, ``uniform`` -> ``FloatDistribution``, ``q_uniform`` -> either with
  ``step=q``, ``log_uniform``/``log_uniform_values`` -> ``FloatDistribution(log=True)`` (an integer with q 1:
  ``IntDistribution(log=True)``). Optuna has no quantized log or normal distributions: ``q_log_*`` samples
  ``FloatDistribution(log=True)`` and rounds (the study keeps the unrounded number); the normal family samples
  the quantile ``u`` in (0, 1) as ``<name>.quantile`` and uses ``mu + sigma * Phi^-1(u)`` (exponentiated for
  ``log_normal``, rounded for ``q_``), so TPE still models it. Constants are no study parameters.

The values a trial trains with (rounded, cast, layer lists decoded) are in its user attribute ``values``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from kfops.components.contracts import KfopsError, StopTraining
from kfops.components.sweep.spec import QUANTILE_EPSILON, ParameterSpace, SweepSpec

ATTR_VALUES = "values"  # trial user attribute: the decoded values trained with
ATTR_RUN_ID = "mlflow_run_id"
ATTR_PRUNED_AT = "pruned_at_epoch"
STUDY_ATTR_METRIC = "metric"
STUDY_ATTR_PRUNER = "pruner"  # the pruner's settings: storage does not keep the pruner itself
SQLITE_TIMEOUT_S = 60


class TrialPruned(StopTraining):
    """The study's pruner stopped this trial after an epoch whose validation metric lagged."""


def sqlite_url(path: str | Path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).resolve()}"


def storage(url: str):
    """An RDB storage; sqlite waits for a lock instead of failing when two workers write at once."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite:") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as err:  # SQLAlchemy's errors (bad URL, unreachable database) name the problem
        raise KfopsError(f"cannot open the sweep storage {url.split('@')[-1]}: {err}") from err


# ---------------------------------------------------------------------------------------------- the space
def parameter_key(space: ParameterSpace) -> str:
    """The study's name for a parameter: its own, or ``<name>.quantile`` for the normal family."""
    return f"{space.name}.quantile" if space.normal else space.name


def _encode_choice(value: Any) -> Any:
    return json.dumps(list(value)) if isinstance(value, tuple) else value


def distribution(space: ParameterSpace):
    """The Optuna distribution that samples ``space`` (before ``decode``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if space.distribution == "categorical":
        return CategoricalDistribution([_encode_choice(v) for v in space.values])
    if space.normal:
        return FloatDistribution(QUANTILE_EPSILON, 1 - QUANTILE_EPSILON)
    if space.distribution == "int_uniform":
        return IntDistribution(int(space.low), int(space.high))
    if space.distribution == "q_uniform":
        if space.integer:
            return IntDistribution(int(space.low), int(space.high), step=int(space.q))
        steps = math.floor((space.high - space.low) / space.q + 1e-9)
        return FloatDistribution(space.low, space.low + steps * space.q, step=space.q)
    if space.integer and space.q == 1 and space.low == int(space.low):
        return IntDistribution(int(space.low), math.floor(space.high), log=space.log)
    return FloatDistribution(space.low, space.high, log=space.log)


def distributions(spec: SweepSpec) -> dict[str, Any]:
    return {parameter_key(p): distribution(p) for p in spec.searched}


def decode(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The values one trial trains with, from the study's parameters (fixed values included)."""
    values: dict[str, Any] = dict(spec.fixed)
    for space in spec.searched:
        raw = params[parameter_key(space)]
        if space.distribution == "categorical":
            chosen = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else raw
            values[space.name] = chosen
        elif space.normal:
            z = NormalDist().inv_cdf(min(max(float(raw), QUANTILE_EPSILON), 1 - QUANTILE_EPSILON))
            number = space.mu + space.sigma * z
            values[space.name] = space.quantize(math.exp(number) if space.log else number)
        else:
            values[space.name] = space.quantize(raw)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}


def grid_space(spec: SweepSpec) -> dict[str, list]:
    """GridSampler's search space: every value of each searched parameter, as the study stores them."""
    return {parameter_key(p): [_encode_choice(v) for v in p.grid_values()] for p in spec.searched}


# ---------------------------------------------------------------------------------------------- the study
def _grid_sampler(search_space: dict[str, list], seed: int):
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler calls ``study.stop()`` once the grid is done, which only works inside ``optimize`` (and,
        raised from ``tell``, would lose the last trial's result): the trial budget ends an ask-and-tell sweep."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return AskTellGridSampler(search_space, seed=seed)


def sampler(spec: SweepSpec, worker: int = 0):
    import optuna

    seed = spec.seed + worker
    if spec.method == "grid":
        return _grid_sampler(grid_space(spec), seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # TPE starts from random trials: a third of the budget, between 2 and Optuna's default of 10.
    startup = max(2, min(10, spec.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)


def pruner_settings(spec: SweepSpec, max_epochs: int) -> dict[str, Any]:
    if spec.early_terminate is None:
        return {"type": "none"}
    et = spec.early_terminate
    return {
        "type": "hyperband",
        "min_resource": et.min_iter,
        "max_resource": max(et.max_iter or max_epochs, et.min_iter),
        "reduction_factor": et.eta,
    }


def pruner_from(settings: dict[str, Any]):
    import optuna

    if settings.get("type") == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings["min_resource"],
            max_resource=settings["max_resource"],
            reduction_factor=settings["reduction_factor"],
        )
    return optuna.pruners.NopPruner()


def create_study(spec: SweepSpec, storage_url: str, study_name: str, max_epochs: int):
    """A new study for this sweep, recording the objective metric and the pruner in the storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = pruner_settings(spec, max_epochs)
    try:
        study = optuna.create_study(
            storage=storage(storage_url),
            study_name=study_name,
            direction=spec.goal,
            sampler=sampler(spec),
            pruner=pruner_from(settings),
        )
    except optuna.exceptions.DuplicatedStudyError as err:
        raise KfopsError(f"a sweep study named {study_name!r} already exists in {storage_url}") from err
    study.set_user_attr(STUDY_ATTR_METRIC, spec.metric)
    study.set_user_attr(STUDY_ATTR_PRUNER, settings)
    return study


def load_study(storage_url: str, study_name: str, spec: SweepSpec | None = None, worker: int = 0):
    """The study as a worker (with the spec: its sampler) or a training process (without) sees it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError as err:
        raise KfopsError(f"no sweep study named {study_name!r} in {storage_url}") from err
    settings = study.user_attrs.get(STUDY_ATTR_PRUNER, {"type": "none"})
    return optuna.load_study(
        study_name=study_name,
        storage=store,
        sampler=sampler(spec, worker) if spec is not None else None,
        pruner=pruner_from(settings),
    )


@dataclass
class TrialTicket:
    """One asked trial: what it trains with and how its training process finds it again."""

    number: int
    trial_id: int
    values: dict[str, Any]


def ask(study, spec: SweepSpec) -> TrialTicket:
    trial = study.ask(distributions(spec))
    values = decode(spec, trial.params)
    trial.set_user_attr(ATTR_VALUES, values)
    # The storage's id of the trial (Optuna has no public name for it): how a training process finds it.
    return TrialTicket(number=trial.number, trial_id=trial._trial_id, values=values)


def tell_result(study, ticket: TrialTicket, value: float | None, run_id: str = "", failed: bool = False) -> str:
    """Record a finished trial: pruned (when its training process said so), failed, or complete with its
    value. Returns the state recorded: ``complete``, ``pruned`` or ``failed``."""
    import optuna
    from optuna.trial import TrialState

    trial = optuna.trial.Trial(study, ticket.trial_id)
    if run_id:
        trial.set_user_attr(ATTR_RUN_ID, run_id)
    if trial.user_attrs.get(ATTR_PRUNED_AT) is not None:
        study.tell(ticket.number, state=TrialState.PRUNED)
        return "pruned"
    if failed or value is None or not math.isfinite(value):
        study.tell(ticket.number, state=TrialState.FAIL)
        return "failed"
    study.tell(ticket.number, value)
    return "complete"


# -------------------------------------------------------------------------------------- inside a training run
class EpochReporter:
    """``on_epoch`` hook of a training process that is one trial: reports the sweep's metric each epoch to its
    trial and raises ``TrialPruned`` when the study's pruner says the trial should stop."""

    def __init__(self, storage_url: str, study_name: str, trial_id: int):
        import optuna

        self.study = load_study(storage_url, study_name)
        self.metric = self.study.user_attrs.get(STUDY_ATTR_METRIC, "val_loss")
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self.trial_id = trial_id

    def __call__(self, row: dict[str, float]) -> None:
        if self.metric not in row:
            raise KfopsError(f"sweep: training reports no per-epoch {self.metric}; it reports {sorted(row)}")
        epoch = int(row["epoch"])
        self.trial.report(float(row[self.metric]), step=epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr(ATTR_PRUNED_AT, epoch)
            raise TrialPruned(f"sweep: trial {self.trial.number} pruned after epoch {epoch} ({self.metric} lagged)")
