"""The Optuna study a sweep's trials share, as both sides see it: the sweep (``components/sweep``) creates it, asks
for trials and tells their results; each trial's training process (``components/train``) reports its epochs to it.

What the two sides agree on lives here: the storage (an RDB URL: ``sqlite:///<workspace>/sweeps/optuna.db``
locally, a database on a cluster), the attribute names they read and write, the pruner as the study records it
(storage keeps no pruner, so its settings are a study attribute every process rebuilds it from), and
``EpochReporter``, the ``on_epoch`` hook that makes a training run one trial. How a sweep spec maps to samplers and
distributions stays with the sweep (``sweep/optuna_backend.py``).

Optuna is imported inside the functions that use it: training without a sweep never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfops.components.contracts import KfopsError, StopTraining

ATTR_VALUES = "values"  # trial user attribute: the decoded values trained with
ATTR_RUN_ID = "mlflow_run_id"
ATTR_PRUNED_AT = "pruned_at_epoch"  # set by the training process when the pruner stopped it
STUDY_ATTR_METRIC = "metric"  # the metric each epoch reports (``val_loss``, ``val_f1_macro``, ...)
STUDY_ATTR_PRUNER = "pruner"  # the pruner's settings (``pruner_from``)
# MLflow tags: a trial's training run carries both, the sweep finds the run by them
TAG_STUDY = "kfops.sweep.study"
TAG_TRIAL = "kfops.sweep.trial"
SQLITE_TIMEOUT_S = 60


class TrialPruned(StopTraining):
    """The study's pruner stopped this trial after an epoch whose validation metric lagged."""


def sqlite_url(path: str | Path) -> str:
    """The storage URL of a sqlite file at ``path`` (its folder is created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).resolve()}"


def storage(url: str) -> Any:
    """An RDB storage; sqlite waits for a lock instead of failing when two workers write at once."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite:") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as err:  # SQLAlchemy's errors (bad URL, unreachable database) name the problem
        raise KfopsError(f"cannot open the sweep storage {url.split('@')[-1]}: {err}") from err


def pruner_from(settings: dict[str, Any]) -> Any:
    """The pruner a study's recorded settings describe: ``{"type": "hyperband", "min_resource": ...,
    "max_resource": ..., "reduction_factor": ...}`` or ``{"type": "none"}``."""
    import optuna

    if settings.get("type") == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings["min_resource"],
            max_resource=settings["max_resource"],
            reduction_factor=settings["reduction_factor"],
        )
    return optuna.pruners.NopPruner()


def open_study(storage_url: str, study_name: str, sampler: Any = None) -> Any:
    """An existing study with its recorded pruner, and ``sampler`` (a sweep worker's; a training process, which
    only reports, passes none)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError as err:
        raise KfopsError(f"no sweep study named {study_name!r} in {storage_url}") from err
    settings = study.user_attrs.get(STUDY_ATTR_PRUNER, {"type": "none"})
    return optuna.load_study(study_name=study_name, storage=store, sampler=sampler, pruner=pruner_from(settings))


class EpochReporter:
    """``on_epoch`` hook of a training process that is one trial: reports the sweep's metric each epoch to its
    trial and raises ``TrialPruned`` when the study's pruner says the trial should stop."""

    def __init__(self, storage_url: str, study_name: str, trial_id: int):
        import optuna

        self.study_name = study_name
        self.study = open_study(storage_url, study_name)
        self.metric = self.study.user_attrs.get(STUDY_ATTR_METRIC, "val_loss")
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self.trial_id = trial_id

    @property
    def run_tags(self) -> dict[str, str]:
        """The tags the trial's MLflow run carries, by which the sweep finds it."""
        return {TAG_STUDY: self.study_name, TAG_TRIAL: str(self.trial.number)}

    def __call__(self, row: dict[str, float]) -> None:
        if self.metric not in row:
            raise KfopsError(f"sweep: training reports no per-epoch {self.metric}; it reports {sorted(row)}")
        epoch = int(row["epoch"])
        self.trial.report(float(row[self.metric]), step=epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr(ATTR_PRUNED_AT, epoch)
            raise TrialPruned(f"sweep: trial {self.trial.number} pruned after epoch {epoch} ({self.metric} lagged)")
