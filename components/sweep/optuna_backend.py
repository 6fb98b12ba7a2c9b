"""Sweeps on Optuna: one study in shared storage that every worker asks for a trial and tells its result.

The storage is an RDB URL: ``sqlite:///<workspace>/sweeps/optuna.db`` locally, a database on a cluster
(``postgresql://...``, from the environment, never a pipeline parameter). Workers are separate processes, so a
bayes (TPE) worker's next trial already knows every trial finished by any worker, and a training process
reports each epoch's validation metric to its own trial so the study's pruner can stop it. What the sweep and
the training processes share (the storage, the study's attributes, the pruner and ``EpochReporter``) is the
study seam, ``components/study.py``; this module maps a sweep spec onto it.

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
from statistics import NormalDist
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.components.contracts.sweep import QUANTILE_EPSILON, ParameterSpace, SweepSpec
from kfops.components.study import (
    ATTR_PRUNED_AT,
    ATTR_RUN_ID,
    ATTR_VALUES,
    STUDY_ATTR_METRIC,
    STUDY_ATTR_PRUNER,
    open_study,
    pruner_from,
    storage,
)


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


def load_study(storage_url: str, study_name: str, spec: SweepSpec, worker: int = 0):
    """The study as sweep worker ``worker`` sees it: with the spec's sampler, seeded for that worker."""
    return open_study(storage_url, study_name, sampler(spec, worker))


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
