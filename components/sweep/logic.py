"""Sweep: run a sweep spec's trials and write out the best configuration.

Locally (``run_local_sweep``): one Optuna study in sqlite under the workspace; ``parallel`` worker processes
each ask the study for a trial, run it (``run_trial``: the caller's function, in ``kfops sweep`` one kfp.local
run of the ``kfops-sweep-trial`` pipeline through the ``train`` component) and tell the study its result, until
the trial budget is spent. The training process reports every epoch to its trial, so the study's pruner stops
lagging trials (hyperband). On a cluster (``run_katib_sweep``): the spec as a Katib Experiment, submitted,
watched, and its best trial read back.

Either way every trial is an MLflow child run of one parent run (``kfops.sweep.*`` tags), and the best trial's
training parameters are written as YAML (``best_document``) that training takes as it is::

    python -m kfops.components.train --config best.yaml ...      # its `best` section
    kfops run $(yq -r .kfops_run_flags best.yaml)                  # the same values as `kfops run` flags
    training pipeline: the `pipeline_arguments` section as run arguments (the Kubeflow UI, kfp.Client)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.contracts.sweep import SweepSpec, check_objective_for_task
from kfops.components.study import TAG_STUDY, TAG_TRIAL, sqlite_url

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "kfops-sweep"
TAG_SWEEP = "kfops.sweep.name"
# `kfops run` flags for the training parameters it takes (it has no flag for early_stopping_patience).
RUN_FLAGS = {
    "hidden_sizes": "--hidden-sizes",
    "dropout": "--dropout",
    "learning_rate": "--learning-rate",
    "batch_size": "--batch-size",
    "epochs": "--epochs",
    "optimizer": "--optimizer",
    "weight_decay": "--weight-decay",
    "class_weighting": "--class-weighting",
    "seed": "--seed",
    "decision_threshold": "--threshold",
    "threshold_objective": "--threshold-objective",
    "model_family": "--model",
    "model_params": "--model-params",
}


@dataclass
class PreparedData:
    """What every trial trains on: ``preprocess``'s outputs and the raw training split (paths or URIs)."""

    train_features: str
    validation_features: str
    feature_spec: str
    raw_train: str
    data_sha256: str = ""
    data_uri: str = ""


def data_task(feature_spec_uri: str) -> str:
    """The task of the data a sweep trains on, from preprocess's feature spec (a path or an s3:// URI)."""
    from kfops.components import storage
    from kfops.components.contracts import FeatureSpec

    try:
        return FeatureSpec.from_json(storage.read_bytes(feature_spec_uri).decode("utf-8")).task
    except (ValueError, TypeError, KeyError) as err:
        raise KfopsError(f"sweep: cannot read the feature spec {feature_spec_uri}: {err}") from err


@dataclass
class TrialRequest:
    """Everything one trial's run needs (picklable: it crosses to worker processes)."""

    number: int
    trial_id: int
    values: dict[str, Any]  # TrainConfig fields
    data: PreparedData
    experiment: str
    parent_run_id: str
    study_name: str
    storage_url: str
    workspace: str
    tensorboard_root: str = ""


@dataclass
class TrialResult:
    number: int
    state: str  # complete, pruned or failed
    value: float | None
    values: dict[str, Any]
    run_id: str = ""
    seconds: float = 0.0  # the trial's wall time, start to told
    train_seconds: float = 0.0  # the training loop's own time, as the run logged it
    epochs: int = 0
    message: str = ""

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.seconds - self.train_seconds)


@dataclass
class SweepOutcome:
    spec: SweepSpec
    study_name: str
    storage_url: str
    parent_run_id: str
    experiment_id: str
    trials: list[TrialResult] = field(default_factory=list)
    best: TrialResult | None = None
    best_path: str = ""
    document: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ MLflow
def start_parent_run(spec: SweepSpec, experiment: str, study_name: str, tracking_uri: str = "") -> tuple[str, str]:
    """The sweep's parent run (left running until ``finish_parent_run``); returns (run id, experiment id)."""
    import mlflow

    from kfops.components.tracking import ensure_experiment, set_tracking

    set_tracking(tracking_uri)
    experiment_id = ensure_experiment(experiment)
    run = mlflow.MlflowClient().create_run(
        experiment_id,
        run_name=f"sweep {study_name}",
        tags={
            "kfops.stage": "sweep",
            TAG_SWEEP: spec.name,
            TAG_STUDY: study_name,
            "mlflow.note.content": spec.description or f"{spec.method} sweep of {spec.metric} ({spec.goal})",
        },
    )
    client = mlflow.MlflowClient()
    for key, value in {
        "method": spec.method,
        "metric": spec.metric,
        "goal": spec.goal,
        "trials": spec.trials,
        "parallel": spec.parallel,
        "early_terminate": json.dumps(dataclasses.asdict(spec.early_terminate)) if spec.early_terminate else "none",
        "search_space": json.dumps([dataclasses.asdict(p) for p in spec.parameters], default=list)[:6000],
    }.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id, experiment_id


def finish_parent_run(parent_run_id: str, spec: SweepSpec, document: dict[str, Any], failed: bool = False) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    if document.get("value") is not None:
        client.log_metric(parent_run_id, f"best_{spec.metric}", float(document["value"]))
        client.set_tag(parent_run_id, "kfops.sweep.best_run_id", document["mlflow"].get("best_run_id", ""))
        client.log_dict(parent_run_id, document, "sweep/best.yaml")
    client.set_terminated(parent_run_id, "FAILED" if failed else "FINISHED")


def trial_run(experiment_id: str, study_name: str, number: int):
    """The MLflow run of trial ``number`` of a study (None if it never started one)."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_TRIAL}` = '{number}'",
        output_format="list",
        max_results=1,
    )
    return runs[0] if runs else None


# ------------------------------------------------------------------------------------------------ best
def best_document(
    spec: SweepSpec,
    values: dict[str, Any],
    value: float | None,
    base: TrainConfig | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The best configuration as training takes it: ``best`` (TrainConfig fields), ``pipeline_arguments``
    (the training pipeline's parameter names) and ``kfops_run_flags``."""
    config = spec.config(values, base)
    best = {k: v for k, v in config.to_dict().items() if k != "cuda_graphs"}
    pipeline = {("threshold" if k == "decision_threshold" else k): v for k, v in best.items()}
    flags = []
    for name, flag in RUN_FLAGS.items():
        # `kfops run` takes --threshold (a fixed threshold) or --threshold-objective (one chosen on validation),
        # not both: the flag that says what the configuration does.
        fixed = best["threshold_objective"] == "fixed"
        if (name == "decision_threshold" and not fixed) or (name == "threshold_objective" and fixed):
            continue
        value_ = best[name]
        if name == "model_params":
            if not value_:
                continue
            value_ = json.dumps(value_, sort_keys=True)
        text = ",".join(str(v) for v in value_) if isinstance(value_, list) else str(value_)
        flags += [flag, shlex.quote(text)]
    return {
        "sweep": spec.name,
        "method": spec.method,
        "metric": spec.metric,
        "goal": spec.goal,
        "value": value,
        **extra,
        "searched": {k: values[k] for k in (p.name for p in spec.searched) if k in values},
        "best": best,
        "pipeline_arguments": pipeline,
        "kfops_run_flags": " ".join(flags),
    }


def write_best(path: str | Path, document: dict[str, Any]) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# kfops sweep result. Train with it:\n"
        "#   python -m kfops.components.train --config <this file> ...   (reads `best`)\n"
        "#   kfops run <kfops_run_flags>                                  (early_stopping_patience has no flag)\n"
        "#   the training pipeline: `pipeline_arguments` as run arguments\n"
    )

    class NoAliases(yaml.SafeDumper):  # the same list twice is written twice, not as &id001 / *id001
        def ignore_aliases(self, data) -> bool:
            return True

    path.write_text(header + yaml.dump(document, Dumper=NoAliases, sort_keys=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ local
@dataclass
class _Shared:
    """Counters the workers share: trials started and trials failed."""

    started: Any
    failed: Any
    lock: Any


def _claim(shared: _Shared, spec: SweepSpec) -> bool:
    with shared.lock:
        limit = spec.max_failed if spec.max_failed is not None else spec.trials
        if shared.started.value >= spec.trials or shared.failed.value > limit:
            return False
        shared.started.value += 1
        return True


def _run_one(spec: SweepSpec, study, template: TrialRequest, run_trial, experiment_id: str) -> TrialResult:
    from kfops.components.sweep import optuna_backend

    started = time.perf_counter()
    ticket = optuna_backend.ask(study, spec)
    config = spec.config(ticket.values, TrainConfig.from_dict(template.values))
    request = dataclasses.replace(template, number=ticket.number, trial_id=ticket.trial_id, values=config.to_dict())
    message = ""
    try:
        run_trial(request)
        failed = False
    except Exception as err:  # a pruned trial fails its task; tell_result sorts pruned from failed
        failed, message = True, str(err).strip().splitlines()[0][:500] if str(err).strip() else type(err).__name__
    run = trial_run(experiment_id, template.study_name, ticket.number)
    value = None
    if run is not None and not failed:
        value = run.data.metrics.get(spec.metric)
    state = optuna_backend.tell_result(
        study, ticket, value, run_id=run.info.run_id if run else "", failed=failed or value is None
    )
    if state == "pruned":
        message = (run.data.tags.get("kfops.stopped", "") if run else "") or "pruned"
    elif state == "failed" and not message:
        message = f"the run reported no {spec.metric}"
    return TrialResult(
        number=ticket.number,
        state=state,
        value=value if state == "complete" else None,
        values=ticket.values,
        run_id=run.info.run_id if run else "",
        seconds=time.perf_counter() - started,
        train_seconds=float(run.data.metrics.get("train_seconds", 0.0)) if run else 0.0,
        epochs=int(run.data.metrics.get("best_epoch", 0)) if run else 0,
        message=message,
    )


@contextlib.contextmanager
def _quiet(log_path: str):
    """Send this process's stdout, stderr and logging to ``log_path`` (kfp.local prints every task's log)."""
    root = logging.getLogger()
    saved = sys.stdout, sys.stderr, root.handlers[:], root.level
    with open(log_path, "a", encoding="utf-8") as handle:
        sys.stdout = sys.stderr = handle
        root.handlers = [logging.StreamHandler(handle)]
        root.setLevel(logging.INFO)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout, sys.stderr, root.handlers, level = saved[0], saved[1], saved[2], saved[3]
            root.setLevel(level)


def _worker(spec, template, run_trial, experiment_id, worker, shared, results, log_path) -> None:
    """One worker: ask, run, tell, until the budget is spent. Results go to ``results`` (a queue or a list)."""
    from kfops.components.sweep import optuna_backend

    with _quiet(log_path):
        study = optuna_backend.load_study(template.storage_url, template.study_name, spec, worker)
        while _claim(shared, spec):
            result = _run_one(spec, study, template, run_trial, experiment_id)
            if result.state == "failed":
                with shared.lock:
                    shared.failed.value += 1
            print(f"trial {result.number}: {result.state} {result.value} {result.message}", flush=True)
            results.put(result) if hasattr(results, "put") else results.append(result)
    if hasattr(results, "put"):
        results.put(None)  # this worker is done


class _Counter:
    def __init__(self) -> None:
        self.value = 0


class _Relay(list):
    """In-process results: kept, and shown as they come."""

    def __init__(self, on_trial) -> None:
        super().__init__()
        self.on_trial = on_trial

    def append(self, result: TrialResult) -> None:
        super().append(result)
        if self.on_trial is not None:
            self.on_trial(result)


def max_epochs(spec: SweepSpec, base: TrainConfig) -> int:
    """The most epochs a trial can train: hyperband's largest resource."""
    from kfops.components.sweep.spec import katib_bounds

    try:
        space = spec.parameter("epochs")
    except KeyError:
        return base.epochs
    if space.distribution in ("constant", "categorical"):
        return max(space.values)
    return round(katib_bounds(space)[1])


def run_local_sweep(
    spec: SweepSpec,
    data: PreparedData,
    run_trial: Callable[[TrialRequest], Any],
    *,
    workspace: str | Path,
    base: TrainConfig | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str = "",
    tensorboard_root: str = "",
    best_path: str | Path | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
    log_path: str | Path | None = None,
) -> SweepOutcome:
    """Run ``spec.trials`` trials, ``spec.parallel`` at a time (worker processes when more than one), in one
    Optuna study under ``<workspace>/sweeps/``; write the best configuration; return every trial's result.

    ``run_trial(request)`` trains one trial (a module-level function: workers import it); it raises when the
    trial fails or is pruned. ``base`` gives the training parameters the spec does not set."""
    import multiprocessing

    from kfops.components.sweep import optuna_backend

    started = time.perf_counter()
    check_objective_for_task(spec, data_task(data.feature_spec), f"sweep {spec.name}")
    base = base or TrainConfig()
    workspace = Path(workspace).resolve()
    study_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_url = sqlite_url(workspace / "sweeps" / "optuna.db")
    optuna_backend.create_study(spec, storage_url, study_name, max_epochs=max_epochs(spec, base))
    parent_run_id, experiment_id = start_parent_run(spec, experiment, study_name, tracking_uri)
    base_values = {k: v for k, v in base.to_dict().items() if k != "cuda_graphs"}
    template = TrialRequest(
        number=-1,
        trial_id=-1,
        values=base_values,
        data=data,
        experiment=experiment,
        parent_run_id=parent_run_id,
        study_name=study_name,
        storage_url=storage_url,
        workspace=str(workspace),
        tensorboard_root=tensorboard_root,
    )
    log_path = str(log_path or workspace / "logs" / f"sweep-{study_name}.log")
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    outcome = SweepOutcome(spec, study_name, storage_url, parent_run_id, experiment_id)
    failed = True
    try:
        if spec.parallel <= 1:
            shared = _Shared(_Counter(), _Counter(), contextlib.nullcontext())
            collected = _Relay(on_trial)
            _worker(spec, template, run_trial, experiment_id, 0, shared, collected, log_path)
            outcome.trials = list(collected)
        else:
            context = multiprocessing.get_context("spawn")
            shared = _Shared(context.Value("i", 0, lock=False), context.Value("i", 0, lock=False), context.Lock())
            queue = context.Queue()
            workers = [
                context.Process(
                    target=_worker,
                    args=(spec, template, run_trial, experiment_id, index, shared, queue, log_path),
                    daemon=True,
                )
                for index in range(spec.parallel)
            ]
            for process in workers:
                process.start()
            running = len(workers)
            while running:
                result = queue.get()
                if result is None:
                    running -= 1
                    continue
                outcome.trials.append(result)
                if on_trial is not None:
                    on_trial(result)
            for process in workers:
                process.join(timeout=60)
            crashed = [p.exitcode for p in workers if p.exitcode not in (0, None)]
            if crashed:
                raise KfopsError(f"sweep: {len(crashed)} worker(s) died (exit {crashed}); see {log_path}")
        outcome.trials.sort(key=lambda r: r.number)
        complete = [t for t in outcome.trials if t.state == "complete"]
        if complete:
            pick = max if spec.maximize else min
            outcome.best = pick(complete, key=lambda t: t.value)
        counts = {state: sum(t.state == state for t in outcome.trials) for state in ("complete", "pruned", "failed")}
        extra = {
            "trials": counts,
            "study": {"name": study_name, "storage": storage_url},
            "mlflow": {
                "experiment_id": experiment_id,
                "parent_run_id": parent_run_id,
                "best_run_id": outcome.best.run_id if outcome.best else "",
            },
        }
        if outcome.best is None:
            raise KfopsError(
                f"sweep: no trial completed ({counts['pruned']} pruned, {counts['failed']} failed); see {log_path}"
                + (f": {outcome.trials[-1].message}" if outcome.trials else "")
            )
        outcome.document = best_document(spec, outcome.best.values, outcome.best.value, base, **extra)
        outcome.document["best_trial"] = outcome.best.number
        path = best_path or workspace / "sweeps" / study_name / "best.yaml"
        outcome.best_path = str(write_best(path, outcome.document))
        failed = False
    finally:
        finish_parent_run(parent_run_id, spec, outcome.document, failed=failed)
        outcome.seconds = time.perf_counter() - started
    return outcome


# ------------------------------------------------------------------------------------------------ Katib
def run_katib_sweep(
    spec: SweepSpec,
    data,
    pod,
    *,
    namespace: str,
    name: str,
    api=None,
    tracking_uri: str = "",
    timeout_s: float = 86400,
    poll_s: float = 15.0,
    task: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the sweep as a Katib Experiment and wait for it; returns (the Experiment manifest, the best document).
    ``data`` is a ``katib.TrialData``, ``pod`` a ``katib.TrialPod`` (its parent run is set here). ``task``, the
    data's (its feature spec's), is checked against the spec's metric before anything is submitted."""
    import mlflow

    from kfops.components.sweep import katib

    if api is None:
        from kfops.components.kube import connect

        api = connect()
    if task:
        check_objective_for_task(spec, task, f"sweep {spec.name}")
    namespace = namespace or api.default_namespace
    parent_run_id, experiment_id = _katib_parent_run(spec, pod.experiment, name, tracking_uri)
    pod = dataclasses.replace(pod, parent_run_id=parent_run_id)
    manifest = katib.build_experiment(spec, data, pod, name, namespace)
    failed = True
    document: dict[str, Any] = {}
    try:
        katib.submit(api, manifest)
        best = katib.wait(api, spec, namespace, name, timeout_s=timeout_s, poll_s=poll_s)
        runs = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{katib.TRIAL_TAG}` = '{best.trial_name}'",
            output_format="list",
            max_results=1,
        )
        value = best.metrics.get(spec.metric)
        document = best_document(
            spec,
            best.values,
            value if value is None or math.isfinite(value) else None,
            pod.base,
            trials={"succeeded": best.succeeded, "failed": best.failed},
            katib={"experiment": f"{namespace}/{name}", "best_trial": best.trial_name, "metrics": best.metrics},
            mlflow={
                "experiment_id": experiment_id,
                "parent_run_id": parent_run_id,
                "best_run_id": runs[0].info.run_id if runs else "",
            },
        )
        failed = False
    finally:
        finish_parent_run(parent_run_id, spec, document, failed=failed)
    return manifest, document


def _katib_parent_run(spec: SweepSpec, experiment: str, name: str, tracking_uri: str) -> tuple[str, str]:
    """The parent run of Katib Experiment ``name``: the one a retried step made before, else a new one."""
    import mlflow

    from kfops.components.tracking import ensure_experiment, set_tracking

    set_tracking(tracking_uri)
    experiment_id = ensure_experiment(experiment)
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{name}' and tags.`kfops.stage` = 'sweep'",
        output_format="list",
        max_results=1,
    )
    if found:
        return found[0].info.run_id, experiment_id
    return start_parent_run(spec, experiment, name, tracking_uri)
